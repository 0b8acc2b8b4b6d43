"""Bounded localhost load test of ``veil serve``.

Starts a server on a free 127.0.0.1 port (in this process), then N concurrent clients
submit M jobs in total (small real photos), wait for each, download the result and
delete the job. Prints throughput, p50/p95 latency (submit → downloaded) and peak RSS,
and exits non-zero unless every job finished with every image done (0 lost/failed).

    python bench/load.py                      # 20 clients, 200 jobs, real pipeline
    python bench/load.py --fake               # server overhead only (stand-in pipeline)
    python bench/load.py --jobs 50 --clients 5 --size 256 --workers 2

503 (queue full) answers are retried after Retry-After; they are counted, not lost.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn


def photos(size: int) -> list[bytes]:
    from PIL import Image

    out = []
    try:
        from skimage import data

        out.append(Image.fromarray(data.astronaut()))
    except ImportError:
        pass
    try:
        from matplotlib import cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            out.append(Image.open(io.BytesIO(f.read())).convert("RGB"))
    except ImportError:
        pass
    if not out:
        sys.exit("needs scikit-image or matplotlib for sample photos")
    encoded = []
    for im in out:
        im = im.copy()
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        encoded.append(buf.getvalue())
    return encoded


@dataclass
class FakeReport:
    def to_json(self) -> dict:
        return {"detections": {"face": 1, "person": 0, "plate": 0}}


@dataclass
class FakeResult:
    data: bytes
    content_type: str = "image/jpeg"
    format: str = "jpeg"
    report: FakeReport = field(default_factory=FakeReport)


def fake_pipeline(data: bytes, options, *, regions=None, **_):  # noqa: ANN001, ANN201
    time.sleep(0.01)
    return FakeResult(data)


class Server:
    def __init__(self, app) -> None:  # noqa: ANN001
        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server failed to start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--images-per-job", type=int, default=1)
    ap.add_argument("--size", type=int, default=320, help="longest side of the test photos")
    ap.add_argument("--workers", type=int, default=None, help="server worker threads")
    ap.add_argument("--queue-size", type=int, default=64)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--fake", action="store_true", help="stand-in pipeline: measure the server alone")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole run")
    args = ap.parse_args()

    from veil.server.app import create_app
    from veil.server.config import ServerConfig

    imgs = photos(args.size)
    data_dir = Path(tempfile.mkdtemp(prefix="veil-bench-"))
    config = ServerConfig.from_env(data_dir=data_dir, workers=args.workers, queue_size=args.queue_size, ttl=600)
    app = create_app(config, pipeline=fake_pipeline if args.fake else None)
    options = json.dumps({"preset": args.preset})

    lock = threading.Lock()
    next_job = iter(range(args.jobs))
    latencies: list[float] = []
    failures: list[str] = []
    retries_503 = 0
    done_jobs = 0
    deadline = time.monotonic() + args.timeout

    def take() -> int | None:
        with lock:
            return next(next_job, None)

    def client_loop(url: str) -> None:
        nonlocal retries_503, done_jobs
        with httpx.Client(base_url=url, timeout=120, trust_env=False) as c:
            while (i := take()) is not None:
                files = [("files", (f"{i}-{k}.jpg", imgs[(i + k) % len(imgs)], "image/jpeg"))
                         for k in range(args.images_per_job)]
                t0 = time.perf_counter()
                try:
                    while True:
                        r = c.post("/api/v1/jobs", files=files, data={"options": options})
                        if r.status_code != 503:
                            break
                        with lock:
                            retries_503 += 1
                        time.sleep(min(2.0, float(r.headers.get("retry-after", "1"))))
                    if r.status_code != 202:
                        raise RuntimeError(f"submit answered {r.status_code}: {r.text[:200]}")
                    job_id = r.json()["id"]
                    delay = 0.05
                    while True:
                        s = c.get(f"/api/v1/jobs/{job_id}")
                        s.raise_for_status()
                        body = s.json()
                        if body["status"] in ("done", "failed"):
                            break
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"job {job_id} still {body['status']} at the deadline")
                        time.sleep(delay)
                        delay = min(0.5, delay * 1.5)
                    bad = [im for im in body["images"] if im["status"] != "done"]
                    if body["status"] != "done" or bad:
                        raise RuntimeError(f"job {job_id} {body['status']}: {bad[:1]}")
                    for im in body["images"]:
                        got = c.get(f"/api/v1/jobs/{job_id}/images/{im['index']}")
                        if got.status_code != 200 or not got.content:
                            raise RuntimeError(f"job {job_id} image {im['index']}: HTTP {got.status_code}")
                    c.delete(f"/api/v1/jobs/{job_id}").raise_for_status()
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                        done_jobs += 1
                except Exception as exc:  # noqa: BLE001 - every failure is reported
                    with lock:
                        failures.append(f"job #{i}: {exc}")

    with Server(app) as srv:
        # warm up (loads the models once) so the first clients don't measure model loading
        with httpx.Client(base_url=srv.url, timeout=300, trust_env=False) as c:
            r = c.post("/api/v1/anonymize", files={"file": ("w.jpg", imgs[0])}, data={"options": options})
            if r.status_code != 200:
                print(f"warm-up failed: {r.status_code} {r.text[:300]}", file=sys.stderr)
                return 2
        t_start = time.perf_counter()
        threads = [threading.Thread(target=client_loop, args=(srv.url,)) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t_start
        held = app.state.veil.jobs.held_bytes
        audited = len(app.state.veil.audit.entries(limit=args.jobs * 2 + 10))

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    lat = sorted(latencies)
    pct = lambda q: lat[min(len(lat) - 1, int(round(q * (len(lat) - 1))))] if lat else float("nan")  # noqa: E731
    print(f"pipeline        : {'stand-in' if args.fake else 'real'} (preset {args.preset}), "
          f"workers {config.workers}, queue {config.queue_size}")
    print(f"jobs            : {done_jobs}/{args.jobs} done, {len(failures)} failed, "
          f"{args.images_per_job} image(s) each, {args.clients} clients")
    print(f"elapsed         : {elapsed:.1f} s")
    print(f"throughput      : {done_jobs / elapsed:.2f} jobs/s, {done_jobs * args.images_per_job / elapsed:.2f} images/s")
    print(f"latency         : p50 {pct(0.50) * 1000:.0f} ms, p95 {pct(0.95) * 1000:.0f} ms, "
          f"max {(lat[-1] if lat else float('nan')) * 1000:.0f} ms")
    print(f"503 retries     : {retries_503}")
    print(f"peak RSS        : {peak_rss_mb:.0f} MiB (server and clients, one process)")
    print(f"held after run  : {held} bytes; audit entries {audited}")
    for f in failures[:10]:
        print("  FAILED", f, file=sys.stderr)
    lost = args.jobs - done_jobs - len(failures)
    assert lost == 0, f"{lost} jobs lost"
    assert not failures, f"{len(failures)} jobs failed"
    assert held == 0, f"{held} bytes still held after every job was deleted"
    print("OK: 0 jobs lost, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
