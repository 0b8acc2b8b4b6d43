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

The machine is shared: read the figures with the load average printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ray", action="store_true", help="Ray bulk vs the local engine, and the kill test")
    ap.add_argument("--count", type=int, default=1000, help="photos (the given photos repeated)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    ap.add_argument("--no-kill", action="store_true", help="skip the kill-and-restart test")
    ap.add_argument("--kill-only", action="store_true", help="only the kill-and-restart test")
    args = ap.parse_args()
    os.environ.setdefault("VEIL_HOME", str(REPO / ".veil-home"))
    if not args.ray:
        ap.error("choose a section: --ray")
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
