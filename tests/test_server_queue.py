"""Queue bounds, expiry, delete-after-download and memory bookkeeping (stand-in pipeline)."""

from __future__ import annotations

import io
import time
import zipfile

import pytest
from test_server_support import (
    FakePipeline,
    assert_problem,
    start_server,
    tiny_png,
    wait_job,
)

from veil.server.config import ServerConfig
from veil.server.queue import JobQueue, QueueFull, ThreadPoolQueue
from veil.server.uploads import safe_stem, sniff_format


def _submit(c, n=1, **data):
    files = [("files", (f"img{i}.png", tiny_png(), "image/png")) for i in range(n)]
    return c.post("/api/v1/jobs", files=files, data=data)


def test_queue_full_gives_503_with_retry_after_and_recovers(tmp_path):
    pipe = FakePipeline()
    pipe.gate.clear()
    srv = start_server(ServerConfig(data_dir=tmp_path, workers=1, queue_size=1), pipeline=pipe)
    try:
        with srv.client() as c:
            running = _submit(c).json()["id"]
            deadline = time.monotonic() + 10
            while srv.state.queue.stats()["running"] == 0:  # the worker holds the first job
                assert time.monotonic() < deadline
                time.sleep(0.02)
            waiting = _submit(c).json()["id"]
            r = _submit(c)
            assert_problem(r, 503)
            assert int(r.headers["retry-after"]) >= 1
            assert c.get("/api/v1/health").status_code == 200  # still serving
            pipe.gate.set()
            assert wait_job(c, running)["status"] == "done"
            assert wait_job(c, waiting)["status"] == "done"
            assert _submit(c).status_code == 202
    finally:
        pipe.gate.set()
        srv.stop()


def test_results_expire_after_ttl(tmp_path):
    srv = start_server(ServerConfig(data_dir=tmp_path, ttl=0.6, sweep_interval=0.1), pipeline=FakePipeline())
    try:
        with srv.client() as c:
            job = _submit(c, n=2).json()["id"]
            body = wait_job(c, job)
            assert body["expires_at"] >= body["finished_at"]
            assert c.get(f"/api/v1/jobs/{job}/images/1").status_code == 200
            time.sleep(1.0)
            assert_problem(c.get(f"/api/v1/jobs/{job}"), 404)
            assert_problem(c.get(f"/api/v1/jobs/{job}/images/0"), 404)
            assert_problem(c.get(f"/api/v1/jobs/{job}/archive"), 404)
            assert srv.state.store.one("SELECT COUNT(*) AS n FROM jobs")["n"] == 0  # swept, not just hidden
            assert c.get("/api/v1/health").json()["held_bytes"] == 0
    finally:
        srv.stop()


def test_delete_after_download_and_deletes(tmp_path):
    srv = start_server(ServerConfig(data_dir=tmp_path), pipeline=FakePipeline())
    try:
        with srv.client() as c:
            job = _submit(c, n=2, delete_after_download="true").json()["id"]
            assert wait_job(c, job)["delete_after_download"] is True
            assert c.get(f"/api/v1/jobs/{job}/images/0").status_code == 200
            assert_problem(c.get(f"/api/v1/jobs/{job}/images/0"), 404)  # gone once downloaded
            status = c.get(f"/api/v1/jobs/{job}").json()
            assert [i["status"] for i in status["images"]] == ["deleted", "done"]
            assert c.get(f"/api/v1/jobs/{job}/images/1").status_code == 200
            assert_problem(c.get(f"/api/v1/jobs/{job}"), 404)  # last image fetched → job gone

            job = _submit(c, n=3, delete_after_download="1").json()["id"]
            wait_job(c, job)
            r = c.get(f"/api/v1/jobs/{job}/archive")
            assert r.status_code == 200 and len(zipfile.ZipFile(io.BytesIO(r.content)).namelist()) == 3
            assert_problem(c.get(f"/api/v1/jobs/{job}"), 404)

            job = _submit(c, n=2).json()["id"]
            wait_job(c, job)
            assert c.delete(f"/api/v1/jobs/{job}/images/1").status_code == 204
            assert_problem(c.get(f"/api/v1/jobs/{job}/images/1"), 404)
            assert_problem(c.delete(f"/api/v1/jobs/{job}/images/1"), 404)
            names = zipfile.ZipFile(io.BytesIO(c.get(f"/api/v1/jobs/{job}/archive").content)).namelist()
            assert names == ["0001.png"]
            assert c.delete(f"/api/v1/jobs/{job}").status_code == 204
            assert_problem(c.get(f"/api/v1/jobs/{job}"), 404)
            assert_problem(c.delete(f"/api/v1/jobs/{job}"), 404)
            assert_problem(_submit(c, delete_after_download="maybe"), 422, "delete_after_download")
            assert c.get("/api/v1/health").json()["held_bytes"] == 0
    finally:
        srv.stop()


def test_delete_while_queued_cancels(tmp_path):
    pipe = FakePipeline()
    pipe.gate.clear()
    srv = start_server(ServerConfig(data_dir=tmp_path, workers=1, queue_size=4), pipeline=pipe)
    try:
        with srv.client() as c:
            first = _submit(c).json()["id"]
            second = _submit(c, n=3).json()["id"]
            assert c.delete(f"/api/v1/jobs/{second}").status_code == 204
            assert_problem(c.get(f"/api/v1/jobs/{second}"), 404)
            pipe.gate.set()
            wait_job(c, first)
            assert pipe.calls == 1  # the deleted job never ran
            assert c.get("/api/v1/health").json()["held_bytes"] > 0  # first job's result
            c.delete(f"/api/v1/jobs/{first}")
            assert c.get("/api/v1/health").json()["held_bytes"] == 0
    finally:
        pipe.gate.set()
        srv.stop()


def test_archive_not_ready_while_processing(tmp_path):
    pipe = FakePipeline()
    pipe.gate.clear()
    srv = start_server(ServerConfig(data_dir=tmp_path, workers=1), pipeline=pipe)
    try:
        with srv.client() as c:
            job = _submit(c).json()["id"]
            assert_problem(c.get(f"/api/v1/jobs/{job}/archive"), 409)
            assert_problem(c.get(f"/api/v1/jobs/{job}/images/0"), 409)
            assert_problem(c.get(f"/api/v1/jobs/{job}/images/5"), 404)
            pipe.gate.set()
            wait_job(c, job)
    finally:
        pipe.gate.set()
        srv.stop()


def test_thread_pool_queue_contract():
    q = ThreadPoolQueue(workers=1, maxsize=2)
    assert isinstance(q, JobQueue)
    ran: list[str] = []
    q.submit("a")
    q.submit("b")
    with pytest.raises(QueueFull):
        q.submit("c")
    assert q.cancel("a") is True
    q.start(ran.append)
    deadline = time.monotonic() + 5
    while ran != ["b"]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    q.stop()


def test_safe_names_and_sniffing():
    assert safe_stem("../../etc/passwd") == "passwd"
    assert safe_stem("C:\\Users\\me\\Ünïcode photo.JPG") == "Unicode_photo"
    assert safe_stem("..hidden.jpg") == "hidden"
    assert safe_stem("////") is None and safe_stem(None) is None
    assert len(safe_stem("x" * 500 + ".jpg")) == 64
    assert sniff_format(tiny_png()) == "png"
    assert sniff_format(b"\xff\xd8\xff\xe0" + b"\0" * 20) == "jpeg"
    assert sniff_format(b"GIF89a" + b"\0" * 20) is None
    assert sniff_format(b"hello world, not an image") is None
