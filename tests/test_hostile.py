"""The hostile-input suite: a generated corpus (``hostile_corpus``) sent through every
upload route of a real ``veil serve`` process started here.

Every answer must be clear: a 2xx result for a valid but odd file, a 4xx problem
document, or, for a job, a failed image with its reason. Never a 5xx, never a crash:
``/health`` answers after each file, and the server's peak memory (``VmHWM`` of its
process) stays under :data:`MEMORY_BOUND_MB`. The figures are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from hostile_corpus import Case, corpus

#: Peak resident memory the server may reach under the whole suite (models of the fast
#: preset, the web app and the largest decodes of the corpus: 64 MB of PNG rows at most).
MEMORY_BOUND_MB = 1500
ROUTES = ("/api/v1/jobs", "/api/v1/anonymize", "/api/v1/render")
REGIONS = json.dumps([{"target": "face", "box": [10, 10, 40, 40]}])
OPTIONS = json.dumps({"preset": "fast"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _veil() -> list[str]:
    exe = Path(sys.executable).with_name("veil")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from veil.cli.main import app; app()"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``veil serve`` in its own process: one worker, a queue that holds the whole corpus."""
    port = _free_port()
    data = tmp_path_factory.mktemp("hostile-server")
    env = {**os.environ, "VEIL_SERVER_SYNC_WAIT": "120"}
    proc = subprocess.Popen(
        [*_veil(), "serve", "--port", str(port), "--data-dir", str(data), "--workers", "1", "--queue-size", "512",
         "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=2, trust_env=False).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"veil serve did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    with httpx.Client(base_url=url, timeout=180, trust_env=False) as c:
        # warm up: the fast preset's models load on the first image
        assert c.post("/api/v1/anonymize", files={"file": ("w.jpg", corpus()[-1].data)}, data={"options": OPTIONS}).status_code == 200
        yield proc, c
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _send(c: httpx.Client, route: str, case: Case) -> httpx.Response:
    if route.endswith("/jobs"):
        return c.post(route, files=[("files", (case.filename, case.data, "image/jpeg"))], data={"options": OPTIONS})
    data = {"options": OPTIONS, **({"regions": REGIONS} if route.endswith("render") else {})}
    return c.post(route, files={"file": (case.filename, case.data, "application/octet-stream")}, data=data)


def _clear_problem(r: httpx.Response) -> bool:
    if not r.headers.get("content-type", "").startswith("application/problem+json"):
        return False
    body = r.json()
    return body.get("status") == r.status_code and bool(body.get("detail")) and bool(body.get("title"))


def test_hostile_corpus_through_every_upload_route(server):
    proc, c = server
    cases = corpus()
    assert len(cases) >= 100
    tally: Counter[str] = Counter()
    problems: list[str] = []
    jobs: list[tuple[Case, str]] = []
    t0 = time.monotonic()
    for case in cases:
        for route in ROUTES:
            r = _send(c, route, case)
            where = f"{case.name} via {route}: {r.status_code}"
            if r.status_code >= 500:
                tally["5xx"] += 1
                problems.append(f"{where} {r.text[:300]}")
            elif r.status_code >= 400:
                tally["4xx"] += 1
                if not _clear_problem(r):
                    problems.append(f"{where} is not a clear problem document: {r.text[:300]}")
            elif route.endswith("/jobs"):
                tally["accepted job"] += 1
                jobs.append((case, r.json()["id"]))
            else:
                tally["2xx result"] += 1
                if case.expect == "refuse":
                    problems.append(f"{where}: a result for a file that must be refused")
            h = c.get("/api/v1/health")
            assert h.status_code == 200, f"/health after {where}: {h.status_code}"
    # every accepted job ends: each image done, or failed with a reason (never an internal error)
    for case, job_id in jobs:
        deadline = time.monotonic() + 120
        while True:
            body = c.get(f"/api/v1/jobs/{job_id}").json()
            if body["status"] in ("done", "failed"):
                break
            assert time.monotonic() < deadline, f"{case.name}: job still {body['status']}"
            time.sleep(0.05)
        image = body["images"][0]
        if image["status"] == "failed":
            tally["per-image failure"] += 1
            if not image["error"] or "internal error" in image["error"]:
                problems.append(f"{case.name}: failed without a clear reason: {image['error']!r}")
        else:
            tally["job done"] += 1
            if case.expect == "refuse":
                problems.append(f"{case.name}: a job result for a file that must be refused")
        c.delete(f"/api/v1/jobs/{job_id}")
    assert proc.poll() is None, "the server died"
    peak = _vm_hwm_mb(proc.pid)
    print(f"\nhostile suite: {len(cases)} files x {len(ROUTES)} routes = {len(cases) * len(ROUTES)} requests in "
          f"{time.monotonic() - t0:.0f} s; {dict(tally)}; server peak memory (VmHWM) {peak:.0f} MB")
    assert not problems, "\n".join(problems)
    assert tally["5xx"] == 0
    assert peak < MEMORY_BOUND_MB, f"server peak memory {peak:.0f} MB over the {MEMORY_BOUND_MB} MB bound"
