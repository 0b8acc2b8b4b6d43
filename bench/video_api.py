"""Videos through the API: uploads streamed into the encrypted spool, the server's memory
while it takes them, and the spool's own throughput.

Usage:
    python bench/video_api.py [--sizes 64,256,512] [--keep]

Starts a real ``veil serve`` (a subprocess on a free port, a temporary data dir), warms it
up with a one-second clip (models load), then for each size uploads a video of that many
MB (a generated one-second clip of a real face photo followed by padding, so the upload
is large while the work stays small) and waits for its job. Then, in this process, the
same bytes go through a :class:`veil.server.spool.SpoolFile` (1 MiB writes), are read
back whole, and 100 reads of 1 MiB at random offsets stand for Range requests. Peak memory
is the server's VmHWM (the kernel's high-water mark of its resident set) after each step:
flat across sizes means no upload was held whole in memory. Prints a table; MB = 10^6
bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_job(c: httpx.Client, job_id: str) -> dict:
    while True:
        body = c.get(f"/api/v1/jobs/{job_id}").json()
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64,256,512", help="upload sizes in MB")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    os.environ.setdefault("VEIL_HOME", str(ROOT / ".veil-home"))
    from video_clips import face_clip  # noqa: E402 - tests/ on the path

    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="veil-bench-video-api-"))
    port = _port()
    env = {**os.environ, "VEIL_SERVER_DATA_DIR": str(tmp / "server")}
    veil = str(Path(sys.executable).parent / "veil")
    cmd = [veil, "serve", "--port", str(port), "--workers", "1", "--log-level", "warning",
           "--max-video-mb", str(max(sizes) + 16)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    options = json.dumps({"preset": "fast"})
    rows = []
    try:
        with httpx.Client(base_url=url, timeout=600, trust_env=False) as c:
            for _ in range(300):
                try:
                    if c.get("/api/v1/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            clip = face_clip(1.0)
            job = c.post("/api/v1/jobs", files=[("files", ("w.mp4", clip, "video/mp4"))], data={"options": options})
            _wait_job(c, job.json()["id"])
            base = _hwm_mb(proc.pid)
            for mb in sizes:
                path = tmp / f"upload-{mb}.mp4"
                with open(path, "wb") as f:
                    f.write(clip)
                    f.truncate(mb * 10**6)  # padding after the clip: a large upload, little work
                t0 = time.perf_counter()
                with open(path, "rb") as f:
                    r = c.post("/api/v1/jobs", files=[("files", ("v.mp4", f, "video/mp4"))], data={"options": options})
                t_up = time.perf_counter() - t0
                assert r.status_code == 202, r.text
                hwm_up = _hwm_mb(proc.pid)
                done = _wait_job(c, r.json()["id"])
                assert done["status"] == "done", done
                hwm_job = _hwm_mb(proc.pid)
                from veil.server.spool import SpoolDir  # noqa: E402

                sp = SpoolDir(tmp / "bench-spool")
                f = sp.create()
                with open(path, "rb") as src:
                    t2 = time.perf_counter()
                    while piece := src.read(1 << 20):
                        f.write(piece)
                    f.flush()
                    t_spool_w = time.perf_counter() - t2
                t4 = time.perf_counter()
                for at in range(0, f.size, 1 << 20):
                    f.pread(at, 1 << 20)
                t_spool_r = time.perf_counter() - t4
                rng = random.Random(1)
                t3 = time.perf_counter()
                for _ in range(100):
                    f.pread(rng.randrange(0, f.size - (1 << 20)), 1 << 20)
                t_ranges = time.perf_counter() - t3
                f.shred()
                c.delete(f"/api/v1/jobs/{done['id']}")
                rows.append((mb, t_up, mb / t_up, mb / t_spool_w, mb / t_spool_r, 100 * 1.048576 / t_ranges,
                             base, hwm_up, hwm_job))
    finally:
        proc.terminate()
        proc.wait(20)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("| upload MB | upload s | upload MB/s | spool write MB/s | spool read MB/s | 1 MiB random reads MB/s "
          "| server peak MB before | after upload | after its job |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mb, t_up, up, sw, sr, rr, b, hu, hj in rows:
        print(f"| {mb} | {t_up:.1f} | {up:.0f} | {sw:.0f} | {sr:.0f} | {rr:.0f} | {b:.0f} | {hu:.0f} | {hj:.0f} |")


if __name__ == "__main__":
    main()
