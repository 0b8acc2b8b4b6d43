"""Scale-out figures (issue 11), printed as tables.

``--ray``: bulk on Ray Data against the local engine, on this machine.

    python bench/scale.py --ray [--count 1000] [--repeat 1] [--preset fast] [--photos DIR] [--no-kill | --kill-only]

1. Throughput: ``veil anonymize DIR -o OUT --jobs auto`` and ``veil anonymize DIR -o OUT
   --engine ray`` (a local Ray started by the command) over the same ``--count`` photos
   (the ``plates-us`` photos repeated as symlinks), each as a subprocess into a fresh
   output folder, interleaved ``--repeat`` times after one untimed warm-up of each on 8
   photos. **photos/s** is the whole command (start-up, Ray's included); **steady** is
   the rate between the 10th and the 90th percent of outputs (what start-up does not
   distort). Target: Ray's photos/s >= 90% of the local engine's.
2. Kill and restart: the Ray run is started again into a fresh folder, killed with
   SIGKILL (the command, as ``kill -9`` would) once half the outputs exist, and run again.
   Every output's inode and mtime are recorded before the restart: the run passes when
   every photo has exactly one output, none of those written before the kill was written
   again (same inode and mtime), and the restart reports the others done and these
   skipped, and none of the killed run's processes (its local Ray) is still running 30 s
   after the kill. ``--kill-only`` runs this part alone.

``--redis``: the distributed mode (``veil serve --redis`` + ``veil worker`` processes on a
local Debian ``redis-server``, no persistence) against the embedded one, on this machine.

    python bench/scale.py --redis [--count 200] [--repeat 1] [--photos DIR] [--clients 50] [--jobs-per-client 10]

3. Throughput: the same ``--count`` photos (default 200, the ``plates-us`` photos
   repeated), preset ``fast``, sent as jobs of 2 photos (``POST /api/v1/jobs``) by
   ``--throughput-clients`` (8) client threads, each submitting a job, polling it until
   done, downloading its 2 results (checked against their sha256) and deleting it: (a)
   embedded, ``veil serve --workers 2`` (one process, two pipeline threads); (b) Redis,
   ``veil serve --redis`` and two ``veil worker --preset fast`` processes. Both stacks run
   side by side; the workers are timed only once both have registered in RQ (their models
   are loaded before that) and one untimed warm-up batch has gone through each stack;
   the runs are interleaved ``--repeat`` times. **photos/s** = photos / the seconds from
   the first submit to the last job seen done. Target: Redis >= 90% of embedded.
4. Concurrency and faults: ``--clients`` (50) clients x ``--jobs-per-client`` (10) jobs of
   2 photos each, one job after the other per client, against the Redis mode with two
   workers; then the same with one of the two workers killed every ``--kill-every``
   (10) s (SIGKILL to its process group: the worker and RQ's scheduler child, as a
   crashed machine leaves it) and another one started at once under a new ``--name``
   (the oldest is always the one killed, so each lives about two periods). A client
   retries a 503 after its Retry-After (counted, not lost); a job is **lost** when its
   submission got any other 4xx/5xx or no answer, or it did not end ``done`` with every
   image done and downloadable with the announced sha256 within ``--job-timeout``; an
   image is lost likewise. **p50/p95**: job latency, first submit to first poll
   (``--poll`` s) seeing it done.

Every process this section starts has its own process group and is killed at the end
(also on Ctrl-C or an error). The last line turns the measured Redis-mode throughput per
worker into the number of workers a million photos a day needs.

The machine is shared: read the figures with the load average printed beside them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = REPO.parent / "shared" / "eval" / "plates-us" / "images"
SUFFIXES = {".jpg", ".jpeg", ".png"}


def veil_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("veil")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "veil.cli.main"]


def link_photos(source: Path, folder: Path, count: int) -> int:
    photos = sorted(p for p in source.rglob("*") if p.suffix.lower() in SUFFIXES)
    if not photos:
        sys.exit(f"no photos under {source}")
    folder.mkdir(parents=True)
    for i in range(count):
        p = photos[i % len(photos)]
        (folder / f"{i:05d}_{p.name}").symlink_to(p.resolve())
    return count


def outputs(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")] if folder.exists() else []


def run_once(src: Path, out: Path, engine: str, preset: str, total: int, report: Path,
             kill_at: int | None = None) -> dict:  # fmt: skip
    """One command; its wall time, the steady rate (10%-90% of outputs) and its report."""
    cmd = [*veil_cmd(), "anonymize", str(src), "-o", str(out), "--preset", preset, "--report", str(report)]
    cmd += ["--engine", "ray"] if engine == "ray" else ["--jobs", "auto"]
    report.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    marks: dict[int, float] = {}
    lo, hi = max(1, total // 10), max(1, total * 9 // 10)
    killed = False
    while proc.poll() is None:
        n = len(outputs(out))
        for m in (lo, hi):
            if n >= m and m not in marks:
                marks[m] = time.perf_counter()
        if kill_at is not None and n >= kill_at:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    err = proc.communicate()[1].decode(errors="replace")
    wall = time.perf_counter() - t0
    res = {"wall": wall, "rc": proc.returncode, "killed": killed, "pgid": proc.pid}
    if lo in marks and hi in marks and hi > lo:
        res["steady"] = (hi - lo) / (marks[hi] - marks[lo])
    if not killed:
        if proc.returncode not in (0, 1) or not report.exists():
            sys.exit(f"{engine} run failed (exit {proc.returncode}):\n{err[-3000:]}")
        res["summary"] = json.loads(report.read_text())["summary"]
    return res


def _leftovers(pgid: int) -> list[int]:
    """Processes still in the killed command's session (Ray's own, if any outlived it)."""
    alive = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == pgid:
                    alive.append(int(d.name))
            except (ProcessLookupError, PermissionError):
                pass
    return alive


def ray_section(args) -> bool:
    work = Path(tempfile.mkdtemp(prefix="veil-scale-"))
    src = work / "in"
    total = link_photos(args.photos, src, args.count)
    if args.kill_only:
        return kill_section(src, work, total, args.preset)
    warm = work / "warm"
    link_photos(args.photos, warm, 8)
    load = os.getloadavg()[0]
    for engine in ("local", "ray"):
        run_once(warm, work / f"warm-{engine}", engine, args.preset, 8, work / "r.json")
    rates: dict[str, list[float]] = {"local": [], "ray": []}
    steady: dict[str, list[float]] = {"local": [], "ray": []}
    for r in range(args.repeat):
        for engine in ("local", "ray") if r % 2 == 0 else ("ray", "local"):
            res = run_once(src, work / f"out-{engine}-{r}", engine, args.preset, total, work / "r.json")
            s = res["summary"]
            assert s["done"] + s["failed"] == total, s
            rates[engine].append(total / res["wall"])
            if "steady" in res:
                steady[engine].append(res["steady"])
            print(f"  {engine:<5} run {r + 1}: {total / res['wall']:.2f} photos/s, {s['done']} done, {s['failed']} failed", flush=True)
    load = (load + os.getloadavg()[0]) / 2
    loc, ray = statistics.median(rates["local"]), statistics.median(rates["ray"])
    print(f"\nRay bulk vs the local engine: {total} photos, --preset {args.preset}, {os.cpu_count()} cores, load average ~{load:.1f}, "
          f"median of {args.repeat}\n")  # fmt: skip
    print("| engine | photos/s (whole command) | steady photos/s (10%-90%) | vs local |")
    print("|---|---|---|---|")
    med = {e: (statistics.median(v) if v else float("nan")) for e, v in steady.items()}
    print(f"| `--jobs auto` (local) | {loc:.2f} | {med['local']:.2f} | 1.00x |")
    ok = ray >= 0.9 * loc
    print(f"| `--engine ray` | {ray:.2f} | {med['ray']:.2f} | **{ray / loc:.2f}x** (target >= 0.90x: {'PASS' if ok else 'FAIL'}) |")
    if args.no_kill:
        return ok
    return kill_section(src, work, total, args.preset) and ok


def kill_section(src: Path, work: Path, total: int, preset: str) -> bool:
    out = work / "out-kill"
    first = run_once(src, out, "ray", preset, total, work / "k1.json", kill_at=total // 2)
    at_kill = len(outputs(out))
    deadline = time.monotonic() + 30  # Ray's reaper and veil's watchdog take the local Ray down
    while _leftovers(first["pgid"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    after_kill = len(outputs(out))
    left = _leftovers(first["pgid"])
    for pid in left:  # ours: the killed command's own session
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outputs(out)}
    second = run_once(src, out, "ray", preset, total, work / "k2.json")
    final = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outputs(out)}
    names = {p.name for p in src.iterdir()}
    missing = names - set(final)
    rewritten = [n for n, st in stamps.items() if final.get(n) != st]
    s = second["summary"]
    temps = [p for p in out.rglob(".*.veil-tmp")]
    ok = not left and not missing and not rewritten and s["skipped"] == len(stamps) and s["done"] + s["failed"] == total - len(stamps) and not temps
    print(f"\nKilled (SIGKILL) at half-way and restarted, {total} photos\n")
    print("| check | result |")
    print("|---|---|")
    print(f"| outputs when killed | {at_kill} (once its processes were gone: {after_kill}) |")
    print(f"| processes of the killed run still running 30 s later | {len(left)} |")
    print(f"| restart | {s['done']} done, {s['skipped']} skipped, {s['failed']} failed, {second['wall']:.1f} s |")
    print(f"| outputs at the end | {len(final)} of {total} ({len(missing)} missing) |")
    print(f"| written twice (inode or mtime changed) | {len(rewritten)} |")
    print(f"| temporary files left | {len(temps)} |")
    print(f"| kill and restart | **{'PASS' if ok else 'FAIL'}** |")
    return ok

# -- --redis: the distributed mode against the embedded one --------------------------------

MILLION_A_DAY = 1_000_000 / 86400  # photos/s


class Procs:
    """Every process of the ``--redis`` section, each in its own process group (all killed at the end)."""

    def __init__(self, work: Path):
        self.work = work
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = self.work / f"{name}.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "VEIL_NO_PROGRESS": "1"})  # fmt: skip
        proc.log = log  # type: ignore[attr-defined]
        proc.name = name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def kill_all(self) -> None:
        for proc in self.procs:
            self.kill(proc)
        self.procs.clear()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fail(proc: subprocess.Popen, what: str) -> None:
    tail = proc.log.read_text(errors="replace")[-3000:]  # type: ignore[attr-defined]
    raise RuntimeError(f"{what} (exit {proc.poll()}):\n{tail}")


def start_redis(procs: Procs) -> str:
    import shutil

    import redis as redis_lib

    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("needs Debian's redis-server (apt-get install redis-server)")
    port, folder = _free_port(), procs.work / "redis"
    folder.mkdir()
    proc = procs.start("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                 "--dir", str(folder)])  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while True:
        try:
            redis_lib.Redis.from_url(url).ping()
            return url
        except redis_lib.RedisError:
            if proc.poll() is not None or time.monotonic() > deadline:
                _fail(proc, "redis-server did not start")
            time.sleep(0.05)


def start_serve(procs: Procs, name: str, extra: list[str]) -> tuple[str, subprocess.Popen]:
    import httpx

    port = _free_port()
    proc = procs.start(name, [*veil_cmd(), "serve", "--port", str(port), "--data-dir", str(procs.work / name),
                              "--no-require-keys", "--log-level", "warning", *extra])  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=2, trust_env=False).status_code == 200:
                return url, proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _fail(proc, f"veil serve ({name}) did not start")
        time.sleep(0.2)


def start_worker(procs: Procs, redis_url: str, name: str) -> subprocess.Popen:
    return procs.start(name, [*veil_cmd(), "worker", "--redis", redis_url, "--preset", "fast", "--heartbeat", "3",
                              "--maintenance", "1", "--name", name, "--data-dir", str(procs.work / "workers"),
                              "--log-level", "info"])  # fmt: skip


def wait_registered(redis_url: str, workers: list[subprocess.Popen], timeout: float = 300) -> None:
    """Until every worker is registered in RQ (it loads its models before it registers)."""
    import redis as redis_lib
    from rq import Worker

    conn = redis_lib.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    while True:
        names = {w.name for w in Worker.all(connection=conn)}
        if all(w.name in names for w in workers):  # type: ignore[attr-defined]
            return
        for w in workers:
            if w.poll() is not None or time.monotonic() > deadline:
                _fail(w, f"veil worker {w.name} did not register")  # type: ignore[attr-defined]
        time.sleep(0.2)


def load_photos(source: Path, count: int) -> list[tuple[str, bytes]]:
    photos = sorted(p for p in source.rglob("*") if p.suffix.lower() in SUFFIXES)
    if not photos:
        sys.exit(f"no photos under {source}")
    data = {p: p.read_bytes() for p in photos[:count]}
    return [(photos[i % len(photos)].suffix.lower(), data[photos[i % len(photos)]]) for i in range(count)]


def make_jobs(photos: list[tuple[str, bytes]], n_jobs: int, per_job: int = 2) -> list[list[tuple[str, bytes]]]:
    return [[photos[(j * per_job + k) % len(photos)] for k in range(per_job)] for j in range(n_jobs)]


@dataclass
class Tally:
    jobs: int = 0
    images: int = 0
    lost_jobs: int = 0
    lost_images: int = 0
    retried_503: int = 0
    latencies: list[float] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n_images: int, lost_images: int, latency: float | None, reason: str | None) -> None:
        with self.lock:
            self.jobs += 1
            self.images += n_images
            self.lost_images += lost_images
            if reason is not None:
                self.lost_jobs += 1
                self.reasons[reason] = self.reasons.get(reason, 0) + 1
            elif latency is not None:
                self.latencies.append(latency)

    def retried(self) -> None:
        with self.lock:
            self.retried_503 += 1


def _why(tally: Tally) -> str:
    return f" {tally.reasons}" if tally.reasons else ""


def _retry_after(r) -> float:
    try:
        return max(0.5, float(r.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


def run_job(http, photos: list[tuple[str, bytes]], tally: Tally, poll: float, timeout: float) -> None:
    """Submit one job, poll it until it ends, download and check its results, delete it."""
    import hashlib

    import httpx

    n = len(photos)
    files = [("files", (f"p{i}{suffix}", data, "image/png" if suffix == ".png" else "image/jpeg"))
             for i, (suffix, data) in enumerate(photos)]  # fmt: skip
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        try:
            r = http.post("/api/v1/jobs", files=files, data={"options": json.dumps({"preset": "fast"})})
        except httpx.HTTPError as exc:
            return tally.add(n, n, None, f"submit: {type(exc).__name__}")
        if r.status_code == 503 and time.monotonic() < deadline:
            tally.retried()
            time.sleep(_retry_after(r))
            continue
        if r.status_code != 202:
            return tally.add(n, n, None, f"submit: HTTP {r.status_code}")
        break
    job = r.json()["id"]
    while True:
        time.sleep(poll)
        if time.monotonic() > deadline:
            return tally.add(n, n, None, "not done in time")
        try:
            r = http.get(f"/api/v1/jobs/{job}")
        except httpx.HTTPError:
            continue  # the API node busy for a moment: the deadline decides
        if r.status_code == 503:
            tally.retried()
            time.sleep(_retry_after(r))
            continue
        if r.status_code != 200:
            return tally.add(n, n, None, f"poll: HTTP {r.status_code}")
        body = r.json()
        if body["status"] not in ("queued", "processing"):
            break
    latency = time.monotonic() - t0
    bad = []  # why each image that is not done and downloadable is lost (the server's words)
    for im in body["images"]:
        if im["status"] != "done":
            bad.append(f"image {im['status']}: {im.get('error')}")
            continue
        try:
            g = http.get(f"/api/v1/jobs/{job}/images/{im['index']}")
        except httpx.HTTPError as exc:
            bad.append(f"download: {type(exc).__name__}")
            continue
        if g.status_code != 200 or hashlib.sha256(g.content).hexdigest() != im["sha256"]:
            bad.append(f"download: HTTP {g.status_code}" if g.status_code != 200 else "download: sha256 differs")
    try:
        http.delete(f"/api/v1/jobs/{job}")
    except httpx.HTTPError:
        pass
    ok = body["status"] == "done" and not bad
    tally.add(n, len(bad), latency, None if ok else f"job {body['status']}; " + "; ".join(bad))


def run_clients(url: str, work: list[list[list[tuple[str, bytes]]]], poll: float, timeout: float) -> tuple[Tally, float]:
    """One thread per client, each running its jobs one after the other; the tally and the wall time."""
    import httpx

    tally = Tally()

    def client(jobs: list[list[tuple[str, bytes]]]) -> None:
        with httpx.Client(base_url=url, timeout=120, trust_env=False) as http:
            for photos in jobs:
                try:
                    run_job(http, photos, tally, poll, timeout)
                except Exception as exc:  # noqa: BLE001 - counted as a lost job, the run goes on
                    tally.add(len(photos), len(photos), None, f"client error: {type(exc).__name__}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(jobs,), daemon=True) for jobs in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally, time.perf_counter() - t0


def round_robin(jobs: list, clients: int) -> list[list]:
    return [jobs[i::clients] for i in range(clients) if jobs[i::clients]]


def _pct(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def killer(procs: Procs, redis_url: str, workers: list[subprocess.Popen], every: float, stop: threading.Event,
           kills: list[str]) -> None:  # fmt: skip
    """Every ``every`` s: SIGKILL the oldest worker's process group, start a new one at once."""
    while not stop.wait(every):
        victim = workers.pop(0)
        procs.kill(victim)
        kills.append(victim.name)  # type: ignore[attr-defined]
        workers.append(start_worker(procs, redis_url, f"k{len(kills)}"))


def redis_section(args) -> bool:
    import shutil

    work = Path(tempfile.mkdtemp(prefix="veil-scale-"))
    procs = Procs(work)
    ok = False
    try:
        ok = _redis_section(args, procs)
        return ok
    finally:
        procs.kill_all()
        if not ok:  # the processes' logs (no image bytes or file names), to see why
            keep = Path(tempfile.gettempdir()) / f"veil-logs-scale-{os.getpid()}"
            shutil.copytree(work, keep, ignore=shutil.ignore_patterns("redis", "workers", "api", "embedded"))
            print(f"\nthe processes' logs: {keep}", file=sys.stderr)


def _redis_section(args, procs: Procs) -> bool:
    count = args.count or 200
    photos = load_photos(args.photos, max(count, 2 * args.clients * args.jobs_per_client))
    t_start = time.monotonic()
    load0 = os.getloadavg()
    redis_url = start_redis(procs)
    embedded, emb_proc = start_serve(procs, "embedded", ["--workers", "2"])
    urls = {"embedded": embedded, "redis": start_serve(procs, "api", ["--redis", redis_url])[0]}
    workers = [start_worker(procs, redis_url, "w1"), start_worker(procs, redis_url, "w2")]
    wait_registered(redis_url, workers)
    print(f"stacks up in {time.monotonic() - t_start:.0f} s (both workers registered)", flush=True)

    tp_jobs = make_jobs(photos[:count], count // 2)
    warm = round_robin(make_jobs(photos, 4), 4)
    for mode, url in urls.items():  # one untimed warm-up batch through each stack
        tally, wall = run_clients(url, warm, args.poll, args.job_timeout)
        if tally.lost_jobs:
            raise RuntimeError(f"warm-up of {mode} lost jobs: {tally.reasons}")
        print(f"  warm-up {mode}: {tally.images} photos in {wall:.1f} s", flush=True)
    rates: dict[str, list[float]] = {"embedded": [], "redis": []}
    walls: dict[str, list[float]] = {"embedded": [], "redis": []}
    loads: list[float] = []
    lost_tp = 0
    for r in range(args.repeat):
        for mode in ("embedded", "redis") if r % 2 == 0 else ("redis", "embedded"):
            before = os.getloadavg()[0]
            tally, wall = run_clients(urls[mode], round_robin(tp_jobs, args.throughput_clients), args.poll,
                                      args.job_timeout)  # fmt: skip
            loads.append((before + os.getloadavg()[0]) / 2)
            lost_tp += tally.lost_jobs
            rates[mode].append(tally.images / wall)
            walls[mode].append(wall)
            print(f"  {mode:<8} run {r + 1}: {tally.images} photos in {wall:.1f} s = {tally.images / wall:.2f} photos/s, "
                  f"{tally.lost_jobs} jobs lost{_why(tally)}, load {loads[-1]:.1f}", flush=True)  # fmt: skip
    Procs.kill(emb_proc)  # the embedded server: not needed any more
    emb, red = statistics.median(rates["embedded"]), statistics.median(rates["redis"])
    ok = red >= 0.9 * emb and not lost_tp
    print(f"\nEmbedded vs Redis mode: {count} photos (jobs of 2, {args.throughput_clients} clients), --preset fast, "
          f"{os.cpu_count()} cores, load average ~{statistics.mean(loads):.1f}, median of {args.repeat}\n")  # fmt: skip
    print("| mode | photos | seconds | photos/s | vs embedded |")
    print("|---|---|---|---|---|")
    print(f"| embedded: `veil serve --workers 2` | {count} | {statistics.median(walls['embedded']):.1f} | {emb:.2f} | 1.00x |")
    print(f"| Redis: `veil serve --redis` + 2 `veil worker` | {count} | {statistics.median(walls['redis']):.1f} | {red:.2f} | "
          f"**{red / emb:.2f}x** (target >= 0.90x: {'PASS' if red >= 0.9 * emb else 'FAIL'}) |")  # fmt: skip
    if lost_tp:
        print(f"\n**{lost_tp} jobs lost in the throughput runs**")

    rows = []
    n_jobs = args.clients * args.jobs_per_client
    for with_kills in (False, True):
        jobs = make_jobs(photos, n_jobs)
        per_client = [jobs[i * args.jobs_per_client:(i + 1) * args.jobs_per_client] for i in range(args.clients)]
        stop, kills = threading.Event(), []  # type: ignore[var-annotated]
        thread = None
        if with_kills:
            thread = threading.Thread(target=killer, args=(procs, redis_url, workers, args.kill_every, stop, kills),
                                      daemon=True)  # fmt: skip
            thread.start()
        before = os.getloadavg()[0]
        tally, wall = run_clients(urls["redis"], per_client, args.poll, args.job_timeout)
        stop.set()
        if thread is not None:
            thread.join()
        load = (before + os.getloadavg()[0]) / 2
        rows.append((with_kills, tally, wall, len(kills), load))
        print(f"  {'with kills' if with_kills else 'no kills'}: {tally.jobs} jobs in {wall:.0f} s, {tally.lost_jobs} lost"
              f"{_why(tally)}, {len(kills)} kills, load {load:.1f}", flush=True)  # fmt: skip
        if with_kills:
            wait_registered(redis_url, workers)
    print(f"\nRedis mode, 2 workers: {args.clients} concurrent clients x {args.jobs_per_client} jobs of 2 photos, "
          f"--preset fast, poll every {args.poll} s\n")  # fmt: skip
    print("| run | jobs | images | lost jobs | lost images | 503 retried | p50 s | p95 s | kills | seconds | photos/s | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for with_kills, t, wall, k, load in rows:
        name = f"a worker `kill -9`'d every {args.kill_every:g} s" if with_kills else "no faults"
        print(f"| {name} | {t.jobs} | {t.images} | {t.lost_jobs} | {t.lost_images} | {t.retried_503} | "
              f"{statistics.median(t.latencies) if t.latencies else float('nan'):.1f} | {_pct(t.latencies, 95):.1f} | "
              f"{k} | {wall:.0f} | {(t.images - t.lost_images) / wall:.2f} | {load:.1f} |")  # fmt: skip
        ok = ok and not t.lost_jobs and not t.lost_images
    load1 = os.getloadavg()
    print(f"\nload average (1/5/15 min): at the start {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f}, "
          f"at the end {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f}; {os.cpu_count()} cores")  # fmt: skip
    per_worker = red / 2
    need = math.ceil(MILLION_A_DAY / per_worker) if per_worker > 0 else float("inf")
    print(f"one worker here: {per_worker:.2f} photos/s (fast preset) -> a million photos a day needs {need} workers")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ray", action="store_true", help="Ray bulk vs the local engine, and the kill test")
    ap.add_argument("--redis", action="store_true", help="Redis mode (veil serve --redis + veil worker) vs embedded")
    ap.add_argument("--count", type=int, default=None, help="photos (the given photos repeated) [--ray 1000, --redis 200]")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    ap.add_argument("--no-kill", action="store_true", help="skip the kill-and-restart test")
    ap.add_argument("--kill-only", action="store_true", help="only the kill-and-restart test")
    ap.add_argument("--clients", type=int, default=50, help="--redis: concurrent clients of the fault runs")
    ap.add_argument("--jobs-per-client", type=int, default=10, help="--redis: jobs (of 2 photos) per client")
    ap.add_argument("--throughput-clients", type=int, default=8, help="--redis: client threads of the throughput runs")
    ap.add_argument("--kill-every", type=float, default=10.0, help="--redis: seconds between worker kills")
    ap.add_argument("--poll", type=float, default=1.0, help="--redis: seconds between a client's status polls")
    ap.add_argument("--job-timeout", type=float, default=1800.0, help="--redis: a job not done by then is lost")
    args = ap.parse_args()
    os.environ.setdefault("VEIL_HOME", str(REPO / ".veil-home"))
    if args.ray == args.redis:
        ap.error("choose one section: --ray or --redis")
    if args.redis:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally clauses kill what was started
        return 0 if redis_section(args) else 1
    args.count = args.count or 1000
    return 0 if ray_section(args) else 1


def _cleanup() -> None:
    import shutil

    for d in Path(tempfile.gettempdir()).glob("veil-scale-*"):
        if d.stat().st_uid == os.getuid():
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        _cleanup()
