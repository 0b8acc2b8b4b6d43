"""`veil anonymize` against deface 1.5.0, end to end, on the same photos, in one run.

Usage:
    python bench/anonymize_vs_deface.py [--photos DIR] [--limit 60] [--repeat 1]
        [--batch-memory [N]] [--memory-jobs 2] [--deface-venv DIR] [--deface-onnxrt]
        [--no-speed] [--json PATH] [--keep]

Each tool runs as a subprocess over one folder of photos (symlinks to the first --limit
photos under --photos, default ../shared/eval/plates-us/images). Wall time is the whole
command (start-up and model loading included, nothing subtracted), after one untimed
warm-up run of each configuration on 3 photos (model fetch/conversion, disk caches).
Peak memory is the largest sum of RSS over the process tree (sampled every 50 ms; never
below the kernel's own max-RSS of the largest single process); PSS (shared pages split
between processes) is shown beside it. With --repeat R the runs are interleaved and the
median is reported.

Rows: veil default preset with the default targets (face,plate) and with all three
(face,person,plate), veil --preset fast (all three), veil faces only (--targets face),
deface --replacewith solid (faces only, the baseline).
Targets (issue 13, item 7): default preset face+plate <= 0.8x deface's ms/img, all three
<= 1.0x; fast <= 0.5x; and with --batch-memory N
(default 1000 images made by repeating the photos as symlinks) peak memory of
`veil anonymize --jobs 2` < 1.5 GB (1500 MB, 1 MB = 10^6 bytes).

deface is installed by this script into its own venv (default
~/.cache/veil-bench/deface-1.5.0, `python -m venv` + `pip install deface==1.5.0`) and
reused when present. A plain install has no onnxruntime, so deface uses its OpenCV DNN
backend; --deface-onnxrt uses a second venv with onnx + onnxruntime (deface's faster
optional backend). VEIL_HOME defaults to <repo>/.veil-home (the models already there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
DEFACE_VERSION = "1.5.0"
MB = 1e6
MEMORY_LIMIT_MB = 1500.0
WARMUP_PHOTOS = 3

# (label, veil arguments, target ratio vs deface or None)
VEIL_CONFIGS = [
    ("veil default (balanced), face+plate (the default targets)", ["--targets", "face,plate"], 0.8),
    ("veil default (balanced), face+person+plate", ["--targets", "face,person,plate"], 1.0),
    ("veil --preset fast, face+person+plate", ["--preset", "fast", "--targets", "face,person,plate"], 0.5),
    ("veil default (balanced), --targets face", ["--targets", "face"], None),
]


# -- process-tree memory --------------------------------------------------------------------
def _children_proc(pid: int) -> list[int]:
    """Descendants of ``pid`` from /proc (used when psutil is missing)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _proc_kb(pid: int, name: str, key: bytes) -> int:
    """The kB value of the ``key`` line in ``/proc/<pid>/<name>`` (0 when gone)."""
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


class TreeMemory(threading.Thread):
    """Samples the summed RSS (and PSS, on Linux) of a process and all its descendants."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_rss = 0  # bytes
        self.peak_pss = 0
        self.peak_procs = 0
        self.timeline: list[tuple[float, int]] = []  # (time, summed rss)
        self.per_pid: dict[int, list] = {}  # pid -> [peak rss bytes, command line]
        self._done = threading.Event()
        try:
            import psutil

            self._psutil = psutil
        except ImportError:
            self._psutil = None
        self._linux = os.path.exists("/proc/self/smaps_rollup")

    def _pids(self) -> list[int]:
        if self._psutil is not None:
            try:
                return [self.pid] + [c.pid for c in self._psutil.Process(self.pid).children(recursive=True)]
            except self._psutil.Error:
                return []
        return [self.pid] + _children_proc(self.pid)

    def sample(self) -> None:
        rss = pss = 0
        pids = self._pids()
        for pid in pids:
            one = 0
            if self._linux:
                one = _proc_kb(pid, "status", b"VmRSS:") * 1024
                pss += _proc_kb(pid, "smaps_rollup", b"Pss:") * 1024
            elif self._psutil is not None:
                try:
                    one = self._psutil.Process(pid).memory_info().rss
                except self._psutil.Error:
                    pass
            rss += one
            entry = self.per_pid.setdefault(pid, [0, None])
            entry[0] = max(entry[0], one)
            if entry[1] is None:
                entry[1] = _cmdline(pid)
        self.peak_rss = max(self.peak_rss, rss)
        self.timeline.append((time.perf_counter(), rss))
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(pids))

    def run(self) -> None:
        while not self._done.is_set():
            self.sample()
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


@dataclass
class Run:
    wall_s: float
    cpu_s: float  # user + sys of the process and the children it waited for
    peak_rss: int  # bytes, summed over the tree
    peak_pss: int
    procs: int
    rc: int
    outputs: int
    log: Path
    summary: str = ""
    per_pid: dict = field(default_factory=dict)
    quarters: list = field(default_factory=list)  # peak summed RSS per quarter of the run


def _quartiles(timeline: list[tuple[float, int]]) -> list[int]:
    """Largest summed RSS in each quarter of the run (a leak shows as a rising series)."""
    if not timeline:
        return []
    t0, t1 = timeline[0][0], timeline[-1][0]
    span = (t1 - t0) or 1.0
    out = [0, 0, 0, 0]
    for t, rss in timeline:
        q = min(3, int((t - t0) / span * 4))
        out[q] = max(out[q], rss)
    return out


def run_measured(cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> tuple:
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        mem = TreeMemory(proc.pid)
        mem.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        mem.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
    maxrss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # largest single process
    return (wall, usage.ru_utime + usage.ru_stime, max(mem.peak_rss, maxrss), mem.peak_pss, mem.peak_procs,
            proc.returncode, mem.per_pid, _quartiles(mem.timeline))  # fmt: skip


# -- the tools --------------------------------------------------------------------------------
def link_photos(photos: list[Path], folder: Path, count: int | None = None) -> list[Path]:
    """Symlinks to ``photos`` in ``folder`` (repeated round-robin up to ``count``)."""
    folder.mkdir(parents=True, exist_ok=True)
    count = len(photos) if count is None else count
    width = len(str(count))
    out = []
    for i in range(count):
        src = photos[i % len(photos)]
        dst = folder / (f"{i:0{width}d}_{src.name}" if count > len(photos) else src.name)
        dst.symlink_to(src.resolve())
        out.append(dst)
    return out


def find_veil() -> list[str]:
    exe = Path(sys.executable).parent / "veil"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("veil")
    if found:
        return [found]
    sys.exit("veil is not installed (pip install -e . in the repo's venv)")


def wait_for_anonymize(veil: list[str], env: dict[str, str], wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        r = subprocess.run(veil + ["anonymize", "--help"], env=env, capture_output=True, text=True, check=False)
        if r.returncode == 0:
            return
        if time.monotonic() >= deadline:
            sys.exit(f"`veil anonymize --help` still fails after {wait_s:.0f} s:\n{r.stdout}{r.stderr}")
        print("waiting for `veil anonymize` to be registered ...", flush=True)
        time.sleep(10)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "veil-bench"


def deface_venv(path: Path, onnxrt: bool) -> Path:
    """The deface executable in ``path``, installing deface==1.5.0 there first if needed."""
    exe = path / ("Scripts/deface.exe" if os.name == "nt" else "bin/deface")
    py = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    def ok() -> bool:
        if not exe.exists():
            return False
        r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
        if DEFACE_VERSION not in r.stdout + r.stderr:
            return False
        if onnxrt:
            return subprocess.run([str(py), "-c", "import onnx, onnxruntime"], capture_output=True, check=False).returncode == 0
        return True

    if ok():
        return exe
    print(f"installing deface=={DEFACE_VERSION} into {path} ...", flush=True)
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pkgs = [f"deface=={DEFACE_VERSION}"] + (["onnx", "onnxruntime"] if onnxrt else [])
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pkgs], check=True)
    if not ok():
        sys.exit(f"deface {DEFACE_VERSION} did not install into {path}")
    return exe


def deface_backend(exe: Path) -> str:
    py = exe.parent / exe.name.replace("deface", "python")
    r = subprocess.run([str(py), "-c", "import onnx, onnxruntime"], capture_output=True, check=False)
    return "onnxrt" if r.returncode == 0 else "opencv"


@dataclass
class Config:
    label: str
    kind: str  # "veil" | "deface"
    args: list[str]
    target: float | None = None
    runs: list[Run] = field(default_factory=list)
    warmup_s: float | None = None


def run_config(cfg: Config, photos: list[Path], work: Path, tag: str, veil: list[str], deface: Path | None,
               env: dict[str, str], jobs: int | None = None) -> Run:
    """One timed (or warm-up) run of ``cfg`` over ``photos``; outputs are deleted after counting."""
    run_dir = work / tag
    log = work / f"{tag}.log"
    if cfg.kind == "veil":
        src = run_dir / "in"
        link_photos(photos, src)
        out = run_dir / "out"
        cmd = veil + ["anonymize", str(src), "-o", str(out), *cfg.args] + (["--jobs", str(jobs)] if jobs else [])
        wall, cpu, rss, pss, procs, rc, per_pid, quarters = run_measured(cmd, env, log)
        outputs = sum(1 for p in out.rglob("*") if p.is_file()) if out.exists() else 0
        text = log.read_text(errors="replace")
        summary = next((ln.strip() for ln in text.splitlines() if ln.startswith("hidden:")), "")
    else:
        assert deface is not None
        files = link_photos(photos, run_dir)  # deface writes NAME_anonymized.EXT beside each input
        cmd = [str(deface), "--replacewith", "solid", *map(str, files)] + cfg.args
        wall, cpu, rss, pss, procs, rc, per_pid, quarters = run_measured(cmd, env, log)
        outputs = sum(1 for p in run_dir.iterdir() if "_anonymized" in p.stem)
        summary = ""
    shutil.rmtree(run_dir, ignore_errors=True)
    return Run(wall, cpu, rss, pss, procs, rc, outputs, log, summary, per_pid, quarters)


def check(run: Run, n: int, label: str) -> bool:
    if run.rc == 0 and run.outputs == n:
        return True
    tail = "\n".join(run.log.read_text(errors="replace").splitlines()[-15:])
    print(f"!! {label}: exit {run.rc}, {run.outputs}/{n} outputs; log {run.log}:\n{tail}", flush=True)
    return False


def load() -> str:
    try:
        return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "load average n/a"


# -- main ------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of photos (searched recursively)")
    ap.add_argument("--limit", type=int, default=60, help="photos per timed run (default 60)")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per configuration; the median is reported")
    ap.add_argument("--batch-memory", type=int, nargs="?", const=1000, default=None, metavar="N",
                    help="also run `veil anonymize --jobs J` on N images (default 1000) for peak memory")
    ap.add_argument("--memory-jobs", type=int, default=2, help="--jobs for the --batch-memory run (default 2)")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed comparison (with --batch-memory)")
    ap.add_argument("--deface-venv", type=Path, default=None, help="venv for deface (created if missing)")
    ap.add_argument("--deface-onnxrt", action="store_true", help="deface with onnx+onnxruntime (its faster backend)")
    ap.add_argument("--wait-for-cli", type=float, default=600, help="seconds to wait for `veil anonymize` to exist")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = ap.parse_args()

    photos = sorted(p for p in args.photos.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        sys.exit(f"no photos under {args.photos}")
    photos = photos[: args.limit]
    n = len(photos)

    env = dict(os.environ)
    env.setdefault("VEIL_HOME", str(REPO / ".veil-home"))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["COLUMNS"] = "200"
    veil = find_veil()
    wait_for_anonymize(veil, env, args.wait_for_cli)

    work = Path(tempfile.mkdtemp(prefix="veil-bench-"))
    print(f"work folder {work}; VEIL_HOME={env['VEIL_HOME']}", flush=True)
    cpus = os.cpu_count()
    print(f"{platform.node()}: {cpus} CPUs, {load()} (start)", flush=True)
    results: dict = {"photos": str(args.photos), "images": n, "repeat": args.repeat, "cpus": cpus,
                     "load_start": load(), "rows": []}  # fmt: skip
    ok = True
    lines: list[str] = []
    try:
        configs: list[Config] = []
        if not args.no_speed:
            venv = args.deface_venv or cache_dir() / (f"deface-{DEFACE_VERSION}" + ("-onnxrt" if args.deface_onnxrt else ""))
            deface = deface_venv(venv, args.deface_onnxrt)
            backend = deface_backend(deface)
            dargs = ["--backend", "onnxrt"] if args.deface_onnxrt else []
            configs = [Config(lbl, "veil", a, t) for lbl, a, t in VEIL_CONFIGS]
            configs.append(Config(f"deface {DEFACE_VERSION} --replacewith solid ({backend})", "deface", dargs))
            for i, cfg in enumerate(configs):  # warm-up, untimed
                r = run_config(cfg, photos[:WARMUP_PHOTOS], work, f"warmup{i}", veil, deface, env)
                cfg.warmup_s = r.wall_s
                print(f"warm-up {cfg.label}: {r.wall_s:.1f} s for {min(n, WARMUP_PHOTOS)} photos", flush=True)
                ok &= check(r, min(n, WARMUP_PHOTOS), cfg.label)
            for rep in range(args.repeat):  # interleaved, so drifting machine load hits all alike
                for i, cfg in enumerate(configs):
                    r = run_config(cfg, photos, work, f"run{rep}-{i}", veil, deface, env)
                    cfg.runs.append(r)
                    print(f"[{rep + 1}/{args.repeat}] {cfg.label}: {r.wall_s:.1f} s, {r.wall_s / n * 1000:.0f} ms/img, "
                          f"peak {r.peak_rss / MB:.0f} MB {r.summary} ({load()})", flush=True)  # fmt: skip
                    ok &= check(r, n, cfg.label)

        batch = None
        if args.batch_memory:
            cfg = Config(f"veil default, face+person+plate, --jobs {args.memory_jobs}", "veil", ["--targets", "face,person,plate"])
            print(f"batch memory: {args.batch_memory} images, --jobs {args.memory_jobs} ...", flush=True)
            batch_photos = link_photos(photos, work / "batch-src", args.batch_memory)
            r = run_config(cfg, batch_photos, work, "batch", veil, None, env, jobs=args.memory_jobs)
            ok &= check(r, args.batch_memory, cfg.label)
            batch = (cfg, r)

        results["load_end"] = load()
        head = "| tool / config | images | ms/img | CPU ms/img | vs deface | vs deface (CPU) | peak MB (RSS sum) | PSS MB | target | result |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        base = statistics.median(r.wall_s for r in configs[-1].runs) / n if configs else None
        base_cpu = statistics.median(r.cpu_s for r in configs[-1].runs) / n if configs else None
        for cfg in configs:
            walls = [r.wall_s for r in cfg.runs]
            ms = statistics.median(walls) / n * 1000
            cpu = statistics.median(r.cpu_s for r in cfg.runs) / n * 1000
            rss = max(r.peak_rss for r in cfg.runs) / MB
            pss = max(r.peak_pss for r in cfg.runs) / MB
            ratio = ms / 1000 / base
            cpu_ratio = cpu / 1000 / base_cpu
            failed = any(r.rc != 0 or r.outputs != n for r in cfg.runs)
            if cfg.kind == "deface":
                target, verdict = "baseline", "—"
            elif cfg.target is None:
                target, verdict = "—", "—"
            else:
                target, verdict = f"<= {cfg.target}x deface", "PASS" if ratio <= cfg.target else "FAIL"
            if failed:
                verdict = "ERROR"
            lines.append(f"| {cfg.label} | {n} | {ms:.0f} | {cpu:.0f} | {ratio:.2f}x | {cpu_ratio:.2f}x | {rss:.0f} | {pss:.0f} | {target} | {verdict} |")
            results["rows"].append({"config": cfg.label, "images": n, "ms_per_img": ms, "cpu_ms_per_img": cpu,
                                    "ratio_vs_deface": ratio, "cpu_ratio_vs_deface": cpu_ratio, "peak_rss_mb": rss, "peak_pss_mb": pss,
                                    "walls_s": walls, "warmup_s": cfg.warmup_s, "target": target,
                                    "result": verdict, "hidden": cfg.runs[-1].summary})  # fmt: skip
        if batch is not None:
            cfg, r = batch
            nb = args.batch_memory
            per_process = {f"{pid} {cmd}"[:160]: rss / MB for pid, (rss, cmd) in r.per_pid.items() if rss}
            verdict = "PASS" if r.peak_rss / MB < MEMORY_LIMIT_MB else "FAIL"
            if r.rc != 0 or r.outputs != nb:
                verdict = "ERROR"
            lines.append(f"| {cfg.label} | {nb} | {r.wall_s / nb * 1000:.0f} | {r.cpu_s / nb * 1000:.0f} | — | — | "
                         f"{r.peak_rss / MB:.0f} | {r.peak_pss / MB:.0f} | < {MEMORY_LIMIT_MB:.0f} MB | {verdict} |")  # fmt: skip
            results["rows"].append({"config": cfg.label, "images": nb, "ms_per_img": r.wall_s / nb * 1000,
                                    "cpu_ms_per_img": r.cpu_s / nb * 1000, "peak_rss_mb": r.peak_rss / MB,
                                    "peak_pss_mb": r.peak_pss / MB, "processes": r.procs, "result": verdict,
                                    "hidden": r.summary, "per_process_peak_mb": per_process,
                                    "quarter_peaks_mb": [q / MB for q in r.quarters]})  # fmt: skip
    finally:
        if args.keep or not ok:
            print(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{n} photos from {args.photos}, median of {args.repeat} run(s); {cpus} CPUs; "
          f"{results['load_start']} at start, {results['load_end']} at end")  # fmt: skip
    print("ms/img = whole command wall time / images (start-up and model load included); "
          "peak MB = max summed RSS of the process tree (1 MB = 10^6 bytes)")  # fmt: skip
    print("\n".join(lines))
    for row in results["rows"]:
        if row.get("hidden"):
            print(f"  {row['config']}: {row['hidden']}")
    for row in results["rows"]:
        if row.get("quarter_peaks_mb"):
            print("  batch peak RSS sum per quarter of the run (MB): " + ", ".join(f"{q:.0f}" for q in row["quarter_peaks_mb"]))
        for proc, mb in (row.get("per_process_peak_mb") or {}).items():
            print(f"  batch per-process peak RSS {mb:6.0f} MB  {proc}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
