"""Queue bounds, expiry, delete-after-download and memory bookkeeping (real pipeline)."""

from __future__ import annotations

import io
import time
import zipfile
from datetime import datetime

import pytest
from test_server_support import (
    assert_problem,
    occupy_worker,
    png_bytes,
    small_photo,
    start_server,
    submit,
    wait_job,
)

from veil.server.config import ServerConfig
from veil.server.queue import QueueFull, Task, TaskQueue, ThreadTaskQueue
from veil.server.uploads import safe_stem, sniff_format

_submit = submit  # small real photos, fast preset


def test_queue_full_gives_503_with_retry_after_and_recovers(tmp_path, photos):
    srv = start_server(ServerConfig(data_dir=tmp_path, workers=1, queue_size=1))
    try:
        with srv.client() as c:
            running = occupy_worker(c, photos)  # the one worker holds this job
            waiting = _submit(c)
            assert waiting.status_code == 202, waiting.text
            waiting = waiting.json()["id"]
            stats = srv.state.queue.stats()  # one job waits (the running job's other tasks do not count)
            assert {k: stats[k] for k in ("pending", "running", "workers", "capacity")} == {
                "pending": 1, "running": 1, "workers": 1, "capacity": 1}
            r = _submit(c)
            assert_problem(r, 503)
            assert int(r.headers["retry-after"]) >= 1
            assert c.get("/api/v1/health").status_code == 200  # still serving
            assert c.get(f"/api/v1/jobs/{waiting}").json()["status"] == "queued"
            assert c.delete(f"/api/v1/jobs/{running}").status_code == 204  # free the worker
            done = wait_job(c, waiting)
            assert done["status"] == "done" and done["images"][0]["detections"]["face"] >= 1
            r = _submit(c)
            assert r.status_code == 202
            assert wait_job(c, r.json()["id"])["status"] == "done"
    finally:
        srv.stop()


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_results_expire_after_ttl(tmp_path):
    srv = start_server(ServerConfig(data_dir=tmp_path, ttl=2.0, sweep_interval=0.1))
    try:
        with srv.client() as c:
            job = _submit(c, n=2).json()["id"]
            body = wait_job(c, job)
            assert body["status"] == "done"
            assert body["expires_at"] >= body["finished_at"]
            assert c.get(f"/api/v1/jobs/{job}/images/1").status_code == 200
            assert c.get("/api/v1/health").json()["held_bytes"] > 0
            # expires_at is given to the second (truncated): its real moment is < 1 s later
            time.sleep(max(0.0, _ts(body["expires_at"]) + 1.0 - time.time()) + 0.4)
            assert srv.state.store.one("SELECT COUNT(*) AS n FROM jobs")["n"] == 0  # swept, not just hidden
            assert c.get("/api/v1/health").json()["held_bytes"] == 0
            assert_problem(c.get(f"/api/v1/jobs/{job}"), 404)
            assert_problem(c.get(f"/api/v1/jobs/{job}/images/0"), 404)
            assert_problem(c.get(f"/api/v1/jobs/{job}/archive"), 404)
    finally:
        srv.stop()


def _gone(c, url: str, timeout: float = 10.0) -> None:
    """``url`` answers 404 once the last response's background task has run."""
    deadline = time.monotonic() + timeout
    while c.get(url).status_code != 404:
        assert time.monotonic() < deadline, f"{url} still there"
        time.sleep(0.02)
    assert_problem(c.get(url), 404)


def test_delete_after_download_and_deletes(tmp_path):
    srv = start_server(ServerConfig(data_dir=tmp_path))
    try:
        with srv.client() as c:
            job = _submit(c, n=2, delete_after_download="true").json()["id"]
            assert wait_job(c, job)["delete_after_download"] is True
            assert c.get(f"/api/v1/jobs/{job}/images/0").status_code == 200
            # gone once downloaded (by the response's background task: wait for it)
            _gone(c, f"/api/v1/jobs/{job}/images/0")
            status = c.get(f"/api/v1/jobs/{job}").json()
            assert [i["status"] for i in status["images"]] == ["deleted", "done"]
            assert c.get(f"/api/v1/jobs/{job}/images/1").status_code == 200
            _gone(c, f"/api/v1/jobs/{job}")  # last image fetched → job gone

            job = _submit(c, n=3, delete_after_download="1").json()["id"]
            wait_job(c, job)
            r = c.get(f"/api/v1/jobs/{job}/archive")
            assert r.status_code == 200 and len(zipfile.ZipFile(io.BytesIO(r.content)).namelist()) == 3
            _gone(c, f"/api/v1/jobs/{job}")

            job = _submit(c, n=2).json()["id"]
            wait_job(c, job)
            assert c.delete(f"/api/v1/jobs/{job}/images/1").status_code == 204
            assert_problem(c.get(f"/api/v1/jobs/{job}/images/1"), 404)
            assert_problem(c.delete(f"/api/v1/jobs/{job}/images/1"), 404)
            names = zipfile.ZipFile(io.BytesIO(c.get(f"/api/v1/jobs/{job}/archive").content)).namelist()
            assert names == ["0001.jpg"]
            assert c.delete(f"/api/v1/jobs/{job}").status_code == 204
            assert_problem(c.get(f"/api/v1/jobs/{job}"), 404)
            assert_problem(c.delete(f"/api/v1/jobs/{job}"), 404)
            assert_problem(_submit(c, delete_after_download="maybe"), 422, "delete_after_download")
            assert c.get("/api/v1/health").json()["held_bytes"] == 0
    finally:
        srv.stop()


def test_delete_while_queued_cancels(tmp_path, photos):
    srv = start_server(ServerConfig(data_dir=tmp_path, workers=1, queue_size=4))
    try:
        with srv.client() as c:
            blocker = occupy_worker(c, photos)
            first = _submit(c).json()["id"]
            second = _submit(c, n=3).json()["id"]
            assert srv.state.queue.stats()["pending"] == 2
            assert c.delete(f"/api/v1/jobs/{second}").status_code == 204
            assert_problem(c.get(f"/api/v1/jobs/{second}"), 404)
            # out of the queue at once, while the worker is still busy
            stats = srv.state.queue.stats()  # (the blocker's own tasks move on meanwhile)
            assert {k: stats[k] for k in ("pending", "running", "workers", "capacity")} == {
                "pending": 1, "running": 1, "workers": 1, "capacity": 4}
            assert c.get(f"/api/v1/jobs/{blocker}").json()["status"] == "processing"
            assert c.delete(f"/api/v1/jobs/{blocker}").status_code == 204
            assert wait_job(c, first)["status"] == "done"
            third = _submit(c).json()["id"]
            assert wait_job(c, third)["status"] == "done"
            # the deleted job never ran: no audit entry, while the jobs that ran have one
            deadline = time.monotonic() + 10  # a job is audited right after it shows finished
            while not {first, third} <= (audited := {e.job_id for e in srv.state.audit.entries(limit=50)}):
                assert time.monotonic() < deadline, audited
                time.sleep(0.02)
            assert second not in audited and blocker not in audited
            assert c.get("/api/v1/health").json()["held_bytes"] > 0  # finished jobs' results
            c.delete(f"/api/v1/jobs/{first}")
            c.delete(f"/api/v1/jobs/{third}")
            # nothing left: the deleted queued job's originals were freed too, never processed
            assert c.get("/api/v1/health").json()["held_bytes"] == 0
    finally:
        srv.stop()


def test_archive_not_ready_while_queued(tmp_path, photos):
    srv = start_server(ServerConfig(data_dir=tmp_path, workers=1))
    try:
        with srv.client() as c:
            blocker = occupy_worker(c, photos)
            job = _submit(c).json()["id"]
            assert_problem(c.get(f"/api/v1/jobs/{job}/archive"), 409)
            r = c.get(f"/api/v1/jobs/{job}/images/0")
            assert "queued" in assert_problem(r, 409)["detail"] and r.headers["retry-after"]
            assert_problem(c.get(f"/api/v1/jobs/{job}/images/5"), 404)
            assert_problem(c.get(f"/api/v1/jobs/{blocker}/archive"), 409)  # processing: not ready either
            assert c.delete(f"/api/v1/jobs/{blocker}").status_code == 204
            assert wait_job(c, job)["status"] == "done"
            assert c.get(f"/api/v1/jobs/{job}/archive").status_code == 200
    finally:
        srv.stop()


def test_thread_task_queue_contract():
    """maxsize counts waiting jobs (a job's tasks go in together or not at all); cancel
    drops a job's waiting tasks; tasks survive their JSON round trip."""
    q = ThreadTaskQueue(workers=1, maxsize=2)
    assert isinstance(q, TaskQueue)
    ran: list[Task] = []
    q.submit([Task("a", 0), Task("a", 1)])
    q.submit([Task("b", 0)])
    with pytest.raises(QueueFull):
        q.submit([Task("c", 0)])
    assert q.stats()["pending"] == 2 and q.stats()["pending_tasks"] == 3
    assert q.cancel("a") == 2
    q.submit([Task("c", 0, "video")])  # room again: one job waits
    q.start(ran.append)
    deadline = time.monotonic() + 5
    while len(ran) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    q.stop()
    assert ran == [Task("b", 0), Task("c", 0, "video")]
    assert Task.from_json(Task("j_x", 3, "video").to_json()) == Task("j_x", 3, "video")
    with pytest.raises(ValueError):
        Task.from_json('{"job_id": 1, "idx": "0"}')


def test_safe_names_and_sniffing():
    assert safe_stem("../../etc/passwd") == "passwd"
    assert safe_stem("C:\\Users\\me\\Ünïcode photo.JPG") == "Unicode_photo"
    assert safe_stem("..hidden.jpg") == "hidden"
    assert safe_stem("////") is None and safe_stem(None) is None
    assert len(safe_stem("x" * 500 + ".jpg")) == 64
    assert sniff_format(png_bytes(small_photo())) == "png"
    assert sniff_format(small_photo()) == "jpeg"
    assert sniff_format(b"\xff\xd8\xff\xe0" + b"\0" * 20) == "jpeg"
    assert sniff_format(b"GIF89a" + b"\0" * 20) is None
    assert sniff_format(b"hello world, not an image") is None
