"""Videos through the API on a real server: encrypted spooling, progress, Range downloads,
limits, bad input, and what a crash leaves on disk.

The clips are made in the test (:mod:`video_clips`: real face photos moved across
frames) and run through the real video core with the fast preset.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import secrets
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from test_server_privacy import _scan as privacy_scan
from test_server_support import FAST, Receiver, assert_problem, small_photo, start_server, wait_job
from video_clips import PATTERN, face_clip, frame_count
from video_media import audio_only
from video_media import face_clip as write_clip

from veil.server.config import ServerConfig, ServerLimits

ROOT = Path(__file__).resolve().parents[1]
MAX_VIDEO = 1024 * 1024


def _needles(data: bytes) -> list[bytes]:
    """Byte strings of the plaintext that must never be found on disk: the clip's metadata
    pattern and 48-byte slices of its compressed data."""
    step = max(1, len(data) // 12)
    return [PATTERN.encode()] + [data[i : i + 48] for i in range(step, len(data) - 48, step)]


def _scan(data_dir: Path, needles: list[bytes]) -> list[str]:
    """Files under ``data_dir`` holding any needle (the database included)."""
    hits = []
    for p in data_dir.rglob("*"):
        if p.is_file():
            try:
                raw = p.read_bytes()
            except FileNotFoundError:  # shredded while we looked
                continue
            hits += [f"{p.name}: {n[:12]!r}" for n in needles if n in raw]
    return hits


def _spool_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "spool").glob("*.spool"))


@pytest.fixture(scope="module")
def srv():
    config = ServerConfig(
        data_dir=Path(tempfile.mkdtemp(prefix="veil-video-test-")),
        workers=1,
        limits=ServerLimits(max_request_bytes=4 * 1024 * 1024, max_file_bytes=2 * 1024 * 1024,
                            max_images_per_job=4, max_video_bytes=MAX_VIDEO),
    )
    s = start_server(config)
    yield s
    s.stop()


@pytest.fixture()
def client(srv):
    with srv.client() as c:
        yield c


def _post(client, files, **data):
    return client.post("/api/v1/jobs", files=files, data={"options": json.dumps(FAST), **data})


def test_video_job_spooled_encrypted_with_progress_ranges_and_webhook(srv, client):
    # a clip made unique by a trailing MP4 "free" box with random bytes: found nowhere else
    marker = secrets.token_bytes(32)
    clip = face_clip(2.0) + struct.pack(">I", 8 + len(marker)) + b"free" + marker
    needles = [marker] + _needles(clip)
    start = time.time()
    hook = Receiver()
    try:
        r = _post(client, [("files", ("holiday.mp4", clip, "video/mp4")), ("files", ("p.jpg", small_photo(), "image/jpeg"))],
                  callback_url=hook.url)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        seen, hits, polls = [], [], 0
        while True:  # while the job runs: progress moves, and no plaintext is ever on disk
            hits += _scan(srv.state.config.data_dir, needles)
            if polls % 25 == 0:  # and none in the temporary folder either (no library spools it)
                hits += privacy_scan([Path(tempfile.gettempdir())], start, needles)
            polls += 1
            body = client.get(f"/api/v1/jobs/{job_id}").json()
            video = body["images"][0]
            assert video["kind"] == "video" and body["images"][1]["kind"] == "image"
            if video["progress"]:
                seen.append(video["progress"])
            if body["status"] in ("done", "failed"):
                break
            time.sleep(0.02)
        hits += privacy_scan([Path(tempfile.gettempdir())], start, needles)
        assert not hits, hits
        assert body["status"] == "done", body
        assert video["status"] == "done", video
        n = frame_count(clip)
        assert seen and all(set(p) == {"stage", "frames_done", "frames_total"} for p in seen)
        assert video["progress"] == {"stage": "done", "frames_done": n, "frames_total": n}
        # progress seen while it ran (how much of it a poll catches depends on the machine)
        assert all(p["frames_total"] == n for p in seen if p["stage"] == "encode"), seen
        assert video["video"] and video["content_type"] == "video/mp4" and video["url"].endswith("/images/0")
        assert video["detections"].get("face", 0) >= 1

        full = client.get(video["url"])
        assert full.status_code == 200 and full.headers["accept-ranges"] == "bytes"
        assert full.headers["content-type"] == "video/mp4"
        assert hashlib.sha256(full.content).hexdigest() == video["sha256"] and len(full.content) == video["size"]
        assert frame_count(full.content) == n and marker not in full.content
        assert not _scan(srv.state.config.data_dir, _needles(full.content))  # the result is encrypted too
        # with the upload shredded, only the result's spool file is left
        assert len(_spool_files(srv.state.config.data_dir)) == 1

        size, url = len(full.content), video["url"]
        part = client.get(url, headers={"Range": "bytes=10-99"})
        assert part.status_code == 206 and part.headers["content-range"] == f"bytes 10-99/{size}"
        assert part.content == full.content[10:100] and part.headers["content-length"] == "90"
        assert client.get(url, headers={"Range": "bytes=-64"}).content == full.content[-64:]
        half = size // 2
        resumed = client.get(url, headers={"Range": f"bytes={half}-", "If-Range": full.headers["etag"]})
        assert resumed.status_code == 206 and full.content[:half] + resumed.content == full.content
        stale = client.get(url, headers={"Range": f"bytes={half}-", "If-Range": '"other"'})
        assert stale.status_code == 200 and stale.content == full.content
        bad = client.get(url, headers={"Range": f"bytes={size}-"})
        assert_problem(bad, 416)
        assert bad.headers["content-range"] == f"bytes */{size}"

        archive = client.get(f"/api/v1/jobs/{job_id}/archive")
        import zipfile

        zf = zipfile.ZipFile(io.BytesIO(archive.content))
        assert zf.namelist() == ["0001.mp4", "0002.jpg"] and zf.read("0001.mp4") == full.content

        assert hook.event.wait(30)
        event = hook.json()
        assert event["event"] == "job.done" and event["job"]["done"] == 2
    finally:
        hook.close()
    assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 204
    assert not _spool_files(srv.state.config.data_dir)  # shredded with the job


def test_photo_downloads_take_ranges_too(client):
    r = _post(client, [("files", ("p.jpg", small_photo(), "image/jpeg"))])
    done = wait_job(client, r.json()["id"])
    url = done["images"][0]["url"]
    whole = client.get(url).content
    part = client.get(url, headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == whole[:10]
    assert part.headers["content-range"] == f"bytes 0-9/{len(whole)}"
    assert client.get(url, headers={"Range": "bytes=-5"}).content == whole[-5:]
    assert client.get(url, headers={"Range": "bytes=5-2"}).status_code == 200  # invalid: ignored
    assert client.get(url, headers={"Range": "bytes=0-1,4-5"}).status_code == 200  # several: whole body
    assert_problem(client.get(url, headers={"Range": f"bytes={len(whole) + 10}-"}), 416)


def test_video_over_the_limit_is_413_and_leaves_no_spool(srv, client):
    big = face_clip(8.0, 12, (640, 480), 160)
    big += bytes(MAX_VIDEO + 1 - len(big))  # padded past the limit: still sniffed as a video
    assert len(big) > MAX_VIDEO
    r = _post(client, [("files", ("big.mp4", big, "video/mp4"))])
    body = assert_problem(r, 413)
    assert "1 MB" in body["detail"] and "video" in body["detail"]
    assert not _spool_files(srv.state.config.data_dir)


def test_bad_videos_refused_at_upload_or_failing_alone(srv, client, tmp_path):
    clip = face_clip(1.0)
    # what the header already tells: 415 naming the file and the reason, nothing left on disk
    audio = tmp_path / "voice.mp4"
    audio_only(audio)
    for name, data, reason in (("cut.mp4", clip[: len(clip) // 3], "truncated"),
                               ("voice.mp4", audio.read_bytes(), "no video stream")):
        r = _post(client, [("files", ("p.jpg", small_photo(), "image/jpeg")), ("files", (name, data, "video/mp4"))])
        body = assert_problem(r, 415, "files[1]")
        assert reason in body["detail"], body
        assert not _spool_files(srv.state.config.data_dir)
    # what only decoding tells (a sound header, garbage after it): that file fails alone
    mkv = tmp_path / "c.mkv"
    write_clip(mkv, frames=12, container="matroska")
    raw = mkv.read_bytes()
    broken = raw[:1000] + bytes(random.Random(3).getrandbits(8) for _ in range(len(raw) - 1000))
    r = _post(client, [("files", ("broken.mkv", broken, "video/x-matroska")), ("files", ("p.jpg", small_photo(), "image/jpeg"))])
    assert r.status_code == 202, r.text
    done = wait_job(client, r.json()["id"])
    bad, good = done["images"]
    assert bad["status"] == "failed" and bad["kind"] == "video" and "corrupt video data" in bad["error"], bad
    assert good["status"] == "done" and done["status"] == "done"
    assert_problem(client.get(f"/api/v1/jobs/{done['id']}/images/0"), 409)
    assert len(_spool_files(srv.state.config.data_dir)) == 0  # the upload shredded, no result kept
    client.delete(f"/api/v1/jobs/{done['id']}")


def test_a_video_on_the_synchronous_endpoint_is_refused_clearly(client):
    r = client.post("/api/v1/anonymize", files={"file": ("c.mp4", face_clip(1.0), "video/mp4")})
    body = assert_problem(r, 415)
    assert "/api/v1/jobs" in body["detail"]


def _serve(data_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "VEIL_SERVER_DATA_DIR": str(data_dir)}
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "veil"), "serve", "--port", str(port), "--workers", "1", "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
    )


def _wait_up(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else "server exited"
        try:
            if httpx.get(url + "/api/v1/health", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("veil serve did not come up")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kill_9_mid_video_leaves_nothing_readable(tmp_path):
    data_dir = tmp_path / "server"
    clip = face_clip(8.0, 12, (640, 480), 160)
    needles = _needles(clip)
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "plain.bin").write_bytes(clip)
    assert len(_scan(tmp_path / "probe", needles)) == len(needles)  # the scan sees plaintext
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(data_dir, port)
    try:
        _wait_up(url, proc)
        with httpx.Client(base_url=url, timeout=60, trust_env=False) as c:
            r = c.post("/api/v1/jobs", files=[("files", ("cctv.mp4", clip, "video/mp4"))],
                       data={"options": json.dumps(FAST)})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            deadline = time.monotonic() + 120
            while True:  # until the video is mid-way through
                assert not _scan(data_dir, needles)
                video = c.get(f"/api/v1/jobs/{job_id}").json()["images"][0]
                assert video["status"] in ("queued", "processing"), video
                if (video["progress"] or {}).get("frames_done"):
                    break
                assert time.monotonic() < deadline, "the video never started"
                time.sleep(0.02)
        assert _spool_files(data_dir)  # the encrypted upload is on disk...
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        left = _spool_files(data_dir)
        assert left and not _scan(data_dir, needles)  # ...and what the crash left is ciphertext
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    proc = _serve(data_dir, port)
    try:
        _wait_up(url, proc)
        assert not _spool_files(data_dir) and not any(p.exists() for p in left)
        assert httpx.get(f"{url}/api/v1/jobs/{job_id}", timeout=10, trust_env=False).status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_download_links_open_one_result_without_the_key(tmp_path):
    """What a ``<video src>`` gets: a short-lived URL for one result, for its owner only."""
    srv = start_server(ServerConfig(data_dir=tmp_path / "server", workers=1, require_keys=True))
    try:
        key = srv.state.keys.create("newsroom")
        with srv.client(authorization=f"Bearer {key.token}") as c, srv.client() as anon:
            r = c.post("/api/v1/jobs", files=[("files", ("a.jpg", small_photo(), "image/jpeg")),
                                              ("files", ("b.jpg", small_photo(), "image/jpeg"))],
                       data={"options": json.dumps(FAST)})
            job = wait_job(c, r.json()["id"])
            whole = c.get(job["images"][0]["url"]).content
            assert_problem(anon.get(job["images"][0]["url"]), 401)
            assert_problem(anon.post(f"/api/v1/jobs/{job['id']}/images/0/link"), 401)
            link = c.post(f"/api/v1/jobs/{job['id']}/images/0/link").json()
            assert link["url"].startswith(f"/api/v1/jobs/{job['id']}/images/0?token=") and link["expires_at"]
            got = anon.get(link["url"], headers={"Range": "bytes=0-99"})
            assert got.status_code == 206 and got.content == whole[:100]
            token = link["url"].split("token=", 1)[1]
            assert_problem(anon.get(f"/api/v1/jobs/{job['id']}/images/1?token={token}"), 401)  # another result
            assert_problem(anon.get(f"/api/v1/jobs/{job['id']}/images/0?token={token[:-2]}xx"), 401)  # forged
            assert_problem(c.post(f"/api/v1/jobs/{job['id']}/images/7/link"), 404)
            srv.state.keys.revoke(key.key.id)
            assert_problem(anon.get(link["url"]), 401)  # a revoked key's links die with it
    finally:
        srv.stop()


def test_results_shredded_when_deleted_mid_run_downloaded_or_expired(srv, client, tmp_path):
    data_dir = srv.state.config.data_dir
    # deleted while it runs: the worker stops and both spool files go
    r = _post(client, [("files", ("long.mp4", face_clip(8.0, 12, (640, 480), 160), "video/mp4"))])
    job_id = r.json()["id"]
    deadline = time.monotonic() + 120
    while not (client.get(f"/api/v1/jobs/{job_id}").json()["images"][0]["progress"] or {}).get("frames_done"):
        assert time.monotonic() < deadline, "the video never started"
        time.sleep(0.02)
    assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 204
    deadline = time.monotonic() + 60
    while _spool_files(data_dir) or srv.state.queue.stats().get("running"):
        assert time.monotonic() < deadline, f"spool files left after a delete: {_spool_files(data_dir)}"
        time.sleep(0.05)
    # delete_after_download: a whole download shreds the result; a partial one does not
    r = _post(client, [("files", ("c.mp4", face_clip(1.0), "video/mp4"))], delete_after_download="true")
    done = wait_job(client, r.json()["id"])
    url = done["images"][0]["url"]
    assert client.get(url, headers={"Range": "bytes=0-9"}).status_code == 206
    assert len(_spool_files(data_dir)) == 1
    assert client.get(url).status_code == 200
    deadline = time.monotonic() + 10
    while _spool_files(data_dir):  # the background task after the response
        assert time.monotonic() < deadline, "the downloaded result was not shredded"
        time.sleep(0.05)
    # expiry: a short-lived server sweeps the job and shreds its result
    short = start_server(ServerConfig(data_dir=tmp_path / "server", workers=1, ttl=1, sweep_interval=0.2))
    try:
        with short.client() as c:
            r = _post(c, [("files", ("c.mp4", face_clip(1.0), "video/mp4"))])
            wait_job(c, r.json()["id"])
            assert len(_spool_files(tmp_path / "server")) == 1
            deadline = time.monotonic() + 20
            while _spool_files(tmp_path / "server"):
                assert time.monotonic() < deadline, "the expired result was not shredded"
                time.sleep(0.1)
            assert_problem(c.get(f"/api/v1/jobs/{r.json()['id']}"), 404)
    finally:
        short.stop()


def test_no_room_for_more_spool_files_is_503(tmp_path):
    clip = face_clip(2.0)
    srv = start_server(ServerConfig(data_dir=tmp_path / "server", workers=1,
                                    limits=ServerLimits(max_spool_bytes=len(clip) * 3 // 2)))
    try:
        with srv.client() as c:
            r = _post(c, [("files", ("c.mp4", clip, "video/mp4"))])
            body = assert_problem(r, 503)
            assert r.headers["retry-after"] and "videos" in body["detail"]
            assert not _spool_files(tmp_path / "server")  # the refused upload is shredded
    finally:
        srv.stop()
