"""The Python client and the ``veil submit`` / ``veil audit`` commands against a live server."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest
from test_server_support import (
    FAST,
    astronaut_jpeg,
    grace_hopper_jpeg,
    shared_main_server,
)
from typer.testing import CliRunner

from veil.client import ApiError, Client


@pytest.fixture(scope="module")
def live():
    return shared_main_server()


def test_client_round_trip(live, tmp_path):
    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(astronaut_jpeg())
    with Client(live.url) as c:
        assert c.health()["status"] == "ok"
        job = c.submit([photo, ("grace.jpg", grace_hopper_jpeg())], options=FAST)
        assert job.status in ("queued", "processing")
        job = c.wait(job, timeout=60)
        assert job.status == "done" and len(job.images) == 2
        first = c.download(job, 0, tmp_path / "out0.jpg")
        assert (tmp_path / "out0.jpg").read_bytes() == first
        assert hashlib.sha256(first).hexdigest() == job.images[0]["sha256"]
        c.download_archive(job, tmp_path / "all.zip")
        assert zipfile.ZipFile(tmp_path / "all.zip").namelist() == ["0001.jpg", "0002.jpg"]
        names = zipfile.ZipFile(io.BytesIO(c.download_archive(job, original_names=True))).namelist()
        assert names == ["0001_astronaut.jpg", "0002_grace.jpg"]
        c.delete(job, 1)
        with pytest.raises(ApiError) as err:
            c.download(job, 1)
        assert err.value.status == 404
        c.delete(job)
        with pytest.raises(ApiError):
            c.status(job)
        data, report, ctype = c.anonymize(photo, options=FAST)
        assert ctype == "image/jpeg" and report["detections"].get("face", 0) >= 1 and data != photo.read_bytes()
        with pytest.raises(ApiError) as err:
            c.submit([b"not an image at all"])
        assert err.value.status == 415 and err.value.errors[0]["field"] == "files[0]"
        with pytest.raises(ApiError) as err:
            c.submit([photo], options={"style": "sparkles"})
        assert err.value.status == 422 and err.value.errors[0]["field"] == "options.style"


def test_submit_and_audit_commands(live, tmp_path):
    from veil.cli.main import app

    src = tmp_path / "in"
    src.mkdir()
    (src / "astronaut.jpg").write_bytes(astronaut_jpeg())
    (src / "grace.jpeg").write_bytes(grace_hopper_jpeg())
    (src / "notes.txt").write_text("ignored: not an image suffix")
    from video_clips import face_clip, frame_count

    (src / "street.mp4").write_bytes(face_clip(1.0))
    out = tmp_path / "out"
    runner = CliRunner()
    r = runner.invoke(app, ["submit", str(src), "--server", live.url, "-o", str(out), "--options", json.dumps(FAST)])
    assert r.exit_code == 0, r.output
    produced = sorted(p.name for p in out.iterdir())
    assert produced == ["astronaut.jpg", "grace.jpg", "street.mp4"]
    assert frame_count((out / "street.mp4").read_bytes()) == 12  # a video goes the same way, streamed
    hashes = {hashlib.sha256((out / n).read_bytes()).hexdigest() for n in produced}

    r = runner.invoke(app, ["audit", "--json", "--limit", "200", "--data-dir", str(live.state.config.data_dir)])
    assert r.exit_code == 0, r.output
    entries = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    mine = [e for e in entries if set(e["outputs_sha256"]) == hashes]
    assert mine and mine[-1]["image_count"] == 3 and mine[-1]["event"] == "job"
    assert "astronaut" not in r.stdout and "grace" not in r.stdout
    r = runner.invoke(app, ["audit", "--since", "1h", "--data-dir", str(live.state.config.data_dir)])
    assert r.exit_code == 0

    bad = runner.invoke(app, ["submit", str(src / "notes.txt"), "--server", live.url, "-o", str(out)])
    assert bad.exit_code != 0 and "415" in bad.output
