"""Load with a crash: ``veil serve`` killed with ``kill -9`` mid-run and restarted.

Starts ``veil serve`` in its own process on a free 127.0.0.1 port with one API key (so
quota is counted), runs N concurrent clients that each submit, poll, download and delete
M jobs of one small real photo, kills the server with SIGKILL once half the jobs have
been submitted, and restarts it on the same port and data directory. Prints jobs
submitted, finished, failed cleanly and lost, and checks that

* every job lost to the restart answers 404 at once (timed), and
* the key's quota is charged only for jobs that were not lost: the images of jobs still
  queued or processing at the kill are given back when the server starts again.

    python bench/load_restart.py                       # 50 clients x 20 jobs, fast preset
    python bench/load_restart.py --clients 10 --jobs-per-client 5

Connection errors while the server is down are retried (and counted); ``503``/``429``
answers are retried after ``Retry-After``. Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from veil.server.config import ServerConfig
from veil.server.keys import KeyManager, utc_day
from veil.server.store import Store


def photo(size: int) -> bytes:
    from PIL import Image
    from skimage import data

    im = Image.fromarray(data.astronaut())
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def veil_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("veil")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from veil.cli.main import app; app()"]


def start(port: int, data_dir: Path, workers: int, queue: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [*veil_cmd(), "serve", "--port", str(port), "--data-dir", str(data_dir), "--workers", str(workers),
         "--queue-size", str(queue), "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2, trust_env=False).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("veil serve did not start")


def usage(db: Path, key_id: str) -> int:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT images FROM usage WHERE key_id = ? AND day = ?", (key_id, utc_day())).fetchone()
    return int(row[0]) if row else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--jobs-per-client", type=int, default=20)
    ap.add_argument("--size", type=int, default=256, help="longest side of the test photo")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--queue-size", type=int, default=256)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds for the whole run")
    args = ap.parse_args()

    total = args.clients * args.jobs_per_client
    data_dir = Path(tempfile.mkdtemp(prefix="veil-restart-"))
    config = ServerConfig(data_dir=data_dir)
    store = Store(config.db_path)
    created = KeyManager(store).create("load", quota_per_day=10 * total, max_concurrent=args.clients + 1)
    store.close()
    key_id, headers = created.key.id, {"Authorization": f"Bearer {created.token}"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    img = photo(args.size)
    options = json.dumps({"preset": args.preset})

    proc = start(port, data_dir, args.workers, args.queue_size)
    with httpx.Client(base_url=url, headers=headers, timeout=300, trust_env=False) as c:  # load the models once
        c.post("/api/v1/anonymize", files={"file": ("w.jpg", img)}, data={"options": options}).raise_for_status()
    warm_usage = usage(config.db_path, key_id)

    lock = threading.Lock()
    tally: Counter[str] = Counter()
    accepted_after_restart = 0
    epoch = 0  # 0 before the kill, 1 once the new server answers
    up = threading.Event()
    up.set()
    deadline = time.monotonic() + args.timeout

    def call(c: httpx.Client, method: str, path: str, **kw) -> tuple[httpx.Response, int]:
        """The answer and the server epoch it came from; waits out the restart."""
        while True:
            up.wait(max(0.0, deadline - time.monotonic()))
            seen = epoch
            try:
                r = c.request(method, path, **kw)
            except httpx.TransportError:
                with lock:
                    tally["connection errors (retried)"] += 1
                time.sleep(0.2)
                continue
            if r.status_code in (429, 503):
                with lock:
                    tally[f"{r.status_code} retries"] += 1
                time.sleep(min(2.0, float(r.headers.get("retry-after", "1"))))
                continue
            return r, seen

    def client() -> None:
        nonlocal accepted_after_restart
        with httpx.Client(base_url=url, headers=headers, timeout=120, trust_env=False) as c:
            for i in range(args.jobs_per_client):
                if time.monotonic() > deadline:
                    with lock:
                        tally["not submitted (deadline)"] += 1
                    continue
                r, seen = call(c, "POST", "/api/v1/jobs", files=[("files", (f"{i}.jpg", img, "image/jpeg"))],
                               data={"options": options})
                with lock:
                    tally["submitted"] += 1
                    if r.status_code == 202 and seen == 1:
                        accepted_after_restart += 1
                if r.status_code != 202:
                    with lock:
                        tally["failed cleanly (refused)" if r.status_code < 500 else "server error"] += 1
                    continue
                job = r.json()["id"]
                while True:
                    r, _ = call(c, "GET", f"/api/v1/jobs/{job}")
                    if r.status_code == 404:
                        outcome = "lost to the restart (404)"
                        break
                    body = r.json()
                    if body["status"] in ("done", "failed"):
                        outcome = None
                        break
                    time.sleep(0.1)
                if outcome is None and body["status"] == "failed":
                    outcome = "failed cleanly (job failed)"
                if outcome is None:
                    r, _ = call(c, "GET", f"/api/v1/jobs/{job}/images/0")
                    outcome = "finished" if r.status_code == 200 and r.content else \
                        "lost to the restart (404)" if r.status_code == 404 else f"download {r.status_code}"
                    call(c, "DELETE", f"/api/v1/jobs/{job}")
                with lock:
                    tally[outcome] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    while tally["submitted"] < total // 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    up.clear()  # hold new requests (answers in flight still arrive)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(config.db_path) as conn:
        unfinished = conn.execute(
            "SELECT id, n_images FROM jobs WHERE key_id = ? AND status IN ('queued', 'processing')", (key_id,)
        ).fetchall()
    charged_at_kill = usage(config.db_path, key_id)
    t_kill = time.perf_counter()
    proc = start(port, data_dir, args.workers, args.queue_size)
    restart_s = time.perf_counter() - t_kill
    charged_after_restart = usage(config.db_path, key_id)
    lost_404_ms = []
    with httpx.Client(base_url=url, headers=headers, timeout=30, trust_env=False) as c:
        for job_id, _ in unfinished[:50]:
            t = time.perf_counter()
            status = c.get(f"/api/v1/jobs/{job_id}").status_code
            lost_404_ms.append((status, (time.perf_counter() - t) * 1000))
    epoch = 1
    up.set()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic()))
    elapsed = time.perf_counter() - t0
    final_usage = usage(config.db_path, key_id)
    proc.terminate()
    proc.wait(30)

    refunded = sum(n for _, n in unfinished)
    expected_final = charged_at_kill - refunded + accepted_after_restart
    finished = tally["finished"]
    print(f"clients x jobs      : {args.clients} x {args.jobs_per_client} = {total} jobs of 1 image "
          f"({args.size} px, preset {args.preset}), server workers {args.workers}")
    print(f"elapsed             : {elapsed:.1f} s (restart: {restart_s:.1f} s until /health answered)")
    for k in ("submitted", "finished", "failed cleanly (refused)", "failed cleanly (job failed)",
              "lost to the restart (404)", "server error", "connection errors (retried)", "503 retries", "429 retries"):
        print(f"{k:<28}: {tally.get(k, 0)}")
    for k, v in sorted(tally.items()):
        if k.startswith("download") or k.startswith("not submitted"):
            print(f"{k:<28}: {v}")
    print(f"unfinished at kill  : {len(unfinished)} jobs, {refunded} images")
    print(f"quota (images today): {charged_at_kill - warm_usage} at the kill -> "
          f"{charged_after_restart - warm_usage} after restart (given back {charged_at_kill - charged_after_restart}); "
          f"final {final_usage - warm_usage}, expected {expected_final - warm_usage}")
    if lost_404_ms:
        worst = max(ms for _, ms in lost_404_ms)
        print(f"lost jobs after restart: {sum(s == 404 for s, _ in lost_404_ms)}/{len(lost_404_ms)} answered 404, "
              f"slowest {worst:.0f} ms")
    ok = True
    checks = [
        (tally["server error"] == 0, "no 5xx"),
        (charged_after_restart == charged_at_kill - refunded, "the restart gives back the quota of unfinished jobs"),
        (final_usage == expected_final, "final quota = images of jobs not lost"),
        (all(s == 404 for s, _ in lost_404_ms), "every lost job answers 404"),
        (all(ms < 1000 for _, ms in lost_404_ms), "at once (under 1 s)"),
        (finished + tally["lost to the restart (404)"] + tally["failed cleanly (refused)"]
         + tally["failed cleanly (job failed)"] == tally["submitted"], "every submitted job is accounted for"),
    ]
    for passed, what in checks:
        print(f"{'ok  ' if passed else 'FAIL'} {what}")
        ok &= passed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
