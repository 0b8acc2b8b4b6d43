"""The distributed mode on real parts: Debian's redis-server, RQ workers (``veil worker``
processes), API nodes sharing one Redis; faults: a worker and an API node killed with
``kill -9``, Redis down."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from redis_server import RedisServer, free_port
from test_server_support import BUSY, Receiver, assert_problem, start_server, wait_job

from veil.server.config import ServerConfig

pytest.importorskip("rq")

VEIL = str(Path(sys.executable).parent / "veil")


def _photos_files(photos: dict[str, Path], n: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    names = ["bus", "zidane"]
    return [("files", (f"p{i}.jpg", photos[names[i % 2]].read_bytes(), "image/jpeg")) for i in range(n)]


def _start_worker(redis_url: str, data_dir: Path, name: str) -> subprocess.Popen:
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / f"{name}.log", "wb")  # read when a test fails
    return subprocess.Popen(
        [VEIL, "worker", "--redis", redis_url, "--data-dir", str(data_dir), "--preset", "fast", "--heartbeat", "3",
         "--maintenance", "1", "--name", name, "--log-level", "info"],
        env={**os.environ, "VEIL_NO_PROGRESS": "1"}, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One Redis, two API nodes (real uvicorn servers) and two ``veil worker`` processes."""
    base = tmp_path_factory.mktemp("cluster")
    redis = RedisServer(base / "redis", password="s3cret-pass").start()
    data = base / "data"
    # one data dir: the two nodes share its keys (several machines would share --database)
    nodes = [start_server(ServerConfig(data_dir=data / "api", redis_url=redis.url, ttl=600)) for _ in (1, 2)]
    workers = {n: _start_worker(redis.url, data / "worker", n) for n in ("w1", "w2")}
    yield {"redis": redis, "nodes": nodes, "workers": workers, "data": data}
    for w in workers.values():
        _stop(w)
    for n in nodes:
        n.stop()
    redis.stop()


def _rq_workers(redis_url: str) -> dict[str, object]:
    import redis as redis_lib
    from rq import Worker

    conn = redis_lib.Redis.from_url(redis_url)
    return {w.name: w for w in Worker.all(connection=conn)}


def test_two_api_nodes_share_jobs_and_webhooks_are_queued(cluster, photos):
    a, b = cluster["nodes"]
    receiver = Receiver()
    try:
        with a.client() as ca, b.client() as cb:
            r = ca.post("/api/v1/jobs", files=_photos_files(photos, 3),
                        data={"options": json.dumps(BUSY), "callback_url": receiver.url})  # fmt: skip
            assert r.status_code == 202, r.text
            job = r.json()["id"]
            done = wait_job(cb, job, timeout=180)  # node B answers for node A's job
            assert done["status"] == "done" and all(i["status"] == "done" for i in done["images"])
            data = cb.get(f"/api/v1/jobs/{job}/images/1").content
            assert hashlib.sha256(data).hexdigest() == done["images"][1]["sha256"]
            with zipfile.ZipFile(io.BytesIO(ca.get(f"/api/v1/jobs/{job}/archive?names=original").content)) as z:
                assert sorted(z.namelist()) == ["0001_p0.jpg", "0002_p1.jpg", "0003_p2.jpg"]
            link = ca.post(f"/api/v1/jobs/{job}/images/0/link").json()["url"]
            assert cb.get(link).status_code == 200  # a link of node A downloads from node B
            assert receiver.event.wait(60), "the queued webhook never arrived"
            assert receiver.json()["job"]["id"] == job and receiver.json()["event"] == "job.done"
            from veil.server.redis_store import connect, shared_secret
            from veil.signing import sign

            head = receiver.requests[0]["headers"]  # signed with the secret every node shares
            secret = shared_secret(connect(cluster["redis"].url), "webhook")
            assert head["x-veil-signature"] == sign(secret, head["x-veil-timestamp"], receiver.requests[0]["body"])
            deadline = time.monotonic() + 30
            while cb.get(f"/api/v1/jobs/{job}").json()["webhook"]["status"] != "delivered":
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        receiver.close()


def test_a_video_runs_on_a_worker_and_downloads_in_ranges_from_the_other_node(cluster):
    """A video: uploaded to node A (spooled encrypted there, then held in Redis pieces),
    run by a worker, progress on node B, downloaded from node B whole and by ranges."""
    from video_clips import face_clip, frame_count

    a, b = cluster["nodes"]
    clip = face_clip(2.0)
    with a.client() as ca, b.client() as cb:
        r = ca.post("/api/v1/jobs", files=[("files", ("clip.mp4", clip, "video/mp4"))], data={"options": json.dumps(BUSY)})
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        assert not list((a.state.config.data_dir / "spool").glob("*"))  # copied to Redis, the local spool shredded
        body = wait_job(cb, job, timeout=180)
        video = body["images"][0]
        assert body["status"] == "done" and video["kind"] == "video", body
        n = frame_count(clip)
        assert video["progress"] == {"stage": "done", "frames_done": n, "frames_total": n}
        assert video["detections"].get("face", 0) >= 1
        full = cb.get(video["url"]).content
        assert hashlib.sha256(full).hexdigest() == video["sha256"] and frame_count(full) == n
        part = cb.get(video["url"], headers={"Range": "bytes=100-4999999"})
        assert part.status_code == 206 and part.content == full[100:5000000]


def test_worker_killed_mid_task_its_task_runs_again(cluster, photos):
    """kill -9 of a worker holding a task: another worker runs it again; every image once."""
    from veil.server.redis_store import RedisBlobStore, RedisJobRepository, connect

    a, _ = cluster["nodes"]
    redis_url = cluster["redis"].url
    with a.client() as c:
        r = c.post("/api/v1/jobs", files=_photos_files(photos, 8), data={"options": json.dumps({"preset": "balanced"})})
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        repo = RedisJobRepository(connect(redis_url))
        deadline = time.monotonic() + 120
        while True:  # until worker w1 holds one of this job's tasks, its image claimed and not settled
            w1 = _rq_workers(redis_url).get("w1")
            current = w1.get_current_job_id() if w1 is not None else None
            if current and current.startswith(job):
                killed_idx = int(current.rsplit("-t", 1)[1])
                if repo.get(job).images[killed_idx].status == "processing":
                    break
            assert time.monotonic() < deadline, "worker w1 never took a task"
            assert c.get(f"/api/v1/jobs/{job}").json()["status"] != "done", "the job ended before w1 took a task"
            time.sleep(0.01)
        victim = cluster["workers"]["w1"]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        # what the kill left is final for that attempt: still processing = interrupted mid-task
        # (it settles in the instant between the check and the kill only rarely)
        interrupted = repo.get(job).images[killed_idx].status == "processing"
        done = wait_job(c, job, timeout=240)
        assert done["status"] == "done"
        assert [i["status"] for i in done["images"]] == ["done"] * 8, done
        for i in range(8):
            assert hashlib.sha256(c.get(f"/api/v1/jobs/{job}/images/{i}").content).hexdigest() == done["images"][i]["sha256"]
    r = connect(redis_url)
    record = RedisJobRepository(r).get(job)
    if interrupted:
        assert record.images[killed_idx].attempts >= 2  # run again after the kill
    results = [k for k in RedisBlobStore(r)._members(job) if "/out/" in k]
    assert len(results) == 8  # one result per image: the lost attempt left none, no duplicates
    cluster["workers"]["w1"] = _start_worker(redis_url, cluster["data"] / "worker", "w1b")


def test_a_task_that_loses_its_worker_three_times_fails_its_image(cluster, photos):
    """Three attempts claimed and lost (as three killed workers leave them): the image
    fails with the reason; the job's other image finishes and the job is done."""
    from veil.pipeline.options import Options
    from veil.server.blobs import blob_key
    from veil.server.distributed import MAX_ATTEMPTS
    from veil.server.queue import Task
    from veil.server.records import ImageRecord, JobRecord
    from veil.server.redis_store import RedisBlobStore, RedisJobRepository, connect
    from veil.server.runner import run_task

    r = connect(cluster["redis"].url)
    repo, blobs = RedisJobRepository(r), RedisBlobStore(r)
    now = time.time()
    job = JobRecord("j_lost3", None, 2, Options.from_mapping(BUSY).to_json(), now, now + 600,
                    images=[ImageRecord(0), ImageRecord(1)])  # fmt: skip
    repo.create(job)
    for i in range(2):
        blobs.put(blob_key(job.id, "in", i), photos["bus"].read_bytes(), 600)
    for _ in range(MAX_ATTEMPTS):
        assert repo.claim(job.id, 0) is not None  # a worker took it ... and was killed
    finished: list[str] = []
    from veil.pipeline.core import anonymize_bytes

    kw = dict(complete=finished.append, ttl=600, max_attempts=MAX_ATTEMPTS)
    assert run_task(Task(job.id, 0), blobs, repo, anonymize_bytes, **kw) == "failed"
    assert run_task(Task(job.id, 1), blobs, repo, anonymize_bytes, **kw) == "done"
    got = repo.get(job.id)
    assert got.images[0].status == "failed" and "3 times" in got.images[0].error
    assert got.images[1].status == "done" and finished == [job.id]
    assert blobs.get(blob_key(job.id, "in", 0)) is None  # the original is dropped either way


def test_api_node_killed_and_restarted_jobs_go_on(cluster, photos, tmp_path):
    port = free_port()
    args = [VEIL, "serve", "--redis", cluster["redis"].url, "--port", str(port), "--data-dir", str(tmp_path),
            "--no-require-keys", "--log-level", "warning"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up() -> subprocess.Popen:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/v1/health", timeout=2, trust_env=False).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.1)

    proc = up()
    try:
        r = httpx.post(f"{url}/api/v1/jobs", files=_photos_files(photos, 4), data={"options": json.dumps(BUSY)},
                       timeout=60, trust_env=False)  # fmt: skip
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc = up()
        with httpx.Client(base_url=url, timeout=60, trust_env=False) as c:
            done = wait_job(c, job, timeout=180)
            assert [i["status"] for i in done["images"]] == ["done"] * 4
            assert c.get(f"/api/v1/jobs/{job}/images/3").status_code == 200
    finally:
        _stop(proc)


def test_redis_down_gives_503_with_retry_after_and_recovers(tmp_path, photos):
    redis = RedisServer(tmp_path / "redis").start()
    srv = start_server(ServerConfig(data_dir=tmp_path / "api", redis_url=redis.url))
    try:
        with srv.client() as c:
            r = c.post("/api/v1/jobs", files=_photos_files(photos, 1), data={"options": json.dumps(BUSY)})
            assert r.status_code == 202, r.text  # queued (no worker runs here)
            job = r.json()["id"]
            health = c.get("/api/v1/health").json()  # and the server says so
            assert health["queue"]["workers"] == 0 and health["status"] == "degraded" and "worker" in health["warning"]
            redis.kill()
            t0 = time.monotonic()
            r = c.get(f"/api/v1/jobs/{job}")
            assert_problem(r, 503)
            assert int(r.headers["retry-after"]) >= 1
            assert time.monotonic() - t0 < 30  # never hangs
            assert_problem(c.post("/api/v1/jobs", files=_photos_files(photos, 1)), 503)
            redis.start()  # back, empty (no persistence: the job went with it)
            assert_problem(c.get(f"/api/v1/jobs/{job}"), 404)
            r = c.post("/api/v1/jobs", files=_photos_files(photos, 1), data={"options": json.dumps(BUSY)})
            assert r.status_code == 202, r.text
    finally:
        srv.stop()
        redis.stop()


def test_a_keys_limit_of_unfinished_jobs_holds_across_nodes_at_once(cluster, photos):
    """Six jobs at once from a key allowed one unfinished job, half to each node: one is
    taken, five get 429 (the slot is taken atomically in Redis). Last in this module: once
    a key exists, the nodes require keys."""
    from concurrent.futures import ThreadPoolExecutor

    a, b = cluster["nodes"]
    created = a.state.keys.create("limited", max_concurrent=1)
    files = _photos_files(photos, 6)  # a job that takes seconds: it is unfinished while the others arrive

    def post(i: int) -> int:
        node = (a, b)[i % 2]
        with node.client(Authorization=f"Bearer {created.token}") as c:
            return c.post("/api/v1/jobs", files=files, data={"options": json.dumps({"preset": "balanced"})}).status_code

    with ThreadPoolExecutor(6) as pool:
        codes = sorted(pool.map(post, range(6)))
    assert codes == [202, 429, 429, 429, 429, 429], codes
