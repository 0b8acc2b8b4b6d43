"""Video: veil against deface 1.5.0 on a labelled clip, and memory over a long video.

Usage:
    python bench/video.py [--eval-dir ../shared/eval] [--photos 20] [--seconds 2] [--seed 5]
        [--presets balanced] [--no-deface] [--deface-venv DIR]
        [--memory-minutes 0] [--memory-size 1920x1080]

The labelled clip is built from the face set's photos: each photo is one shot of
``--seconds`` at 1280x720, 25 fps, a Ken-Burns pan and zoom across it, with hard cuts
between photos (``--seed`` picks the photos and the motion: check a change on a second
seed); the labelled faces move with the pixels, so where every face is in
every frame is known. Both tools hide faces with a solid fill as a box (veil ``--style fill
--shape box --feather 0``, deface ``--replacewith solid --boxes``: the shape is not what is
measured), and a labelled face (>= 16 px high in the frame) counts
as *visible* in a frame when less than half of its box is filled in the output: the
output pixels decide, the same way for both. Printed per tool: per-frame recall, the share
of frames with any face visible, the longest run of frames one face stays visible, and
frames per second of the whole run (decode, detect, track, mask, encode). deface runs
``--keep-audio`` in its own venv (installed by bench/anonymize_vs_deface.py's helper).

``--memory-minutes N`` also writes an N-minute synthetic clip of ``--memory-size`` (moving
real faces on a textured background) and prints veil's peak memory (VmHWM of a child
process, sampled) by quarter of the run, to show it stays flat with the length.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anonymize_vs_deface import DEFACE_VERSION, cache_dir, deface_venv  # noqa: E402

W, H, FPS = 1280, 720, 25
VEIL = str(Path(sys.executable).parent / "veil")
MIN_PX = 16


def ken_burns(eval_dir: Path, photos: int, seconds: float, out: Path, seed: int = 5) -> list[list[tuple[str, list[float]]]]:
    """Write the labelled clip; return, per frame, the faces (>= MIN_PX high, at least half
    inside the frame) as (face id, box in frame pixels)."""
    from veil.evaluation.labels import load_labels

    images = [im for im in load_labels(eval_dir / "faces-dev" / "labels.json") if len(im.boxes.get("face", ()))]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(images), size=min(photos, len(images)), replace=False)
    labels: list[list[tuple[str, list[float]]]] = []
    n = int(round(seconds * FPS))
    with av.open(str(out), "w", format="mp4") as o:
        s = o.add_stream("libx264", rate=FPS, options={"crf": "18", "preset": "veryfast"})
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for k in pick:
            im = images[int(k)]
            src = cv2.cvtColor(cv2.imread(str(im.path)), cv2.COLOR_BGR2RGB)
            ph, pw = src.shape[:2]
            full_w = min(pw, ph * W / H)  # the largest 16:9 window inside the photo
            z0, z1 = rng.uniform(0.65, 1.0, size=2)
            c0 = rng.uniform(0, 1, size=2)
            c1 = rng.uniform(0, 1, size=2)
            for f in range(n):
                t = f / max(1, n - 1)
                ww = full_w * (z0 + (z1 - z0) * t)
                wh = ww * H / W
                cx, cy = c0 + (c1 - c0) * t
                x0, y0 = cx * (pw - ww), cy * (ph - wh)
                sx = W / ww
                m = np.array([[sx, 0, -x0 * sx], [0, sx, -y0 * sx]], dtype=np.float64)
                frame = cv2.warpAffine(src, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    o.mux(p)
                boxes = []
                for j, (x1, y1, x2, y2) in enumerate(im.boxes["face"]):
                    b = np.array([(x1 - x0) * sx, (y1 - y0) * sx, (x2 - x0) * sx, (y2 - y0) * sx])
                    c = np.clip(b, [0, 0, 0, 0], [W, H, W, H])
                    inside = max(0, c[2] - c[0]) * max(0, c[3] - c[1]) / max(1e-9, (b[2] - b[0]) * (b[3] - b[1]))
                    if b[3] - b[1] >= MIN_PX and inside >= 0.5:
                        boxes.append((f"{k}:{j}", [float(v) for v in c]))
                labels.append(boxes)
        for p in s.encode():
            o.mux(p)
    return labels


def visible(out: Path, labels: list[list[tuple[str, list[float]]]]) -> dict[str, float]:
    """Score an output clip from its pixels: a face is hidden when >= half its box is filled."""
    hidden_px = []
    with av.open(str(out)) as c:
        for i, fr in enumerate(c.decode(video=0)):
            rgb = fr.to_ndarray(format="rgb24")
            filled = rgb.max(axis=2) <= 24
            row = []
            for _key, (x1, y1, x2, y2) in labels[i]:
                patch = filled[int(y1) : max(int(y1) + 1, int(y2)), int(x1) : max(int(x1) + 1, int(x2))]
                row.append(bool(patch.mean() >= 0.5))
            hidden_px.append(row)
    frames = len(labels)
    if len(hidden_px) != frames:
        raise SystemExit(f"{out}: {len(hidden_px)} frames, expected {frames}")
    faces = sum(len(r) for r in labels)
    found = sum(sum(r) for r in hidden_px)
    bad_frames = sum(1 for r in hidden_px if not all(r))
    longest, run = 0, {}  # consecutive frames each face has been visible
    for row, hid in zip(labels, hidden_px, strict=True):
        run = {key: run.get(key, 0) + 1 for (key, _box), h in zip(row, hid, strict=True) if not h}
        longest = max([longest, *run.values()])
    return {"recall": found / max(1, faces), "frames_visible": bad_frames / max(1, frames), "longest_run": longest,
            "faces": faces}  # fmt: skip


def run_veil(clip: Path, out: Path, preset: str, targets: str) -> float:
    """Wall seconds of a full ``veil anonymize`` (fill style) of the clip, models included."""
    cmd = [VEIL, "anonymize", str(clip), "-o", str(out.parent), "--style", "fill", "--shape", "box", "--feather", "0",
           "--preset", preset, "--targets", targets]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def run_deface(exe: Path, clip: Path, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(exe), "--keep-audio", "--replacewith", "solid", "--boxes", str(clip), "-o", str(out)], check=True,
                   capture_output=True)  # fmt: skip
    return time.perf_counter() - t0


def memory_run(minutes: float, size: str, preset: str, work: Path) -> None:
    """Peak memory of veil on a long synthetic clip, by quarter of the run."""
    w, h = (int(v) for v in size.split("x"))
    clip = work / "long.mp4"
    frames = int(minutes * 60 * FPS)
    rng = np.random.default_rng(2)
    bg = rng.integers(60, 190, size=(h // 16, w // 16, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1)
    from skimage import data as skdata

    face = cv2.resize(skdata.astronaut()[20:240, 120:320], (160, 176))
    with av.open(str(clip), "w", format="mp4") as o:
        s = o.add_stream("libx264", rate=FPS, options={"crf": "23", "preset": "ultrafast"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            fr = bg.copy()
            x = int((i * 7) % (w - 160))
            fr[200:376, x : x + 160] = face
            for p in s.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                o.mux(p)
        for p in s.encode():
            o.mux(p)
    cmd = [VEIL, "anonymize", str(clip), "-o", str(work / "long-out"),
           "--preset", preset, "--targets", "face"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples: list[tuple[float, int]] = []
    t0 = time.perf_counter()

    def watch() -> None:
        while proc.poll() is None:
            try:
                rss = next(int(x.split()[1]) for x in Path(f"/proc/{proc.pid}/status").read_text().splitlines() if x.startswith("VmRSS"))
                samples.append((time.perf_counter() - t0, rss * 1024))
            except (OSError, StopIteration):
                pass
            time.sleep(0.5)

    th = threading.Thread(target=watch)
    th.start()
    proc.wait()
    th.join()
    total = time.perf_counter() - t0
    quarters = [max((r for t, r in samples if q * total / 4 <= t < (q + 1) * total / 4), default=0) for q in range(4)]
    print(f"\nmemory: {minutes} min {size} ({frames} frames), preset {preset}, faces: wall {total:.0f} s, "
          f"{frames / total:.1f} fps")  # fmt: skip
    print("| peak RSS | quarter 1 | quarter 2 | quarter 3 | quarter 4 |")
    print("|---|---|---|---|---|")
    print(f"| {max(quarters) / 2**20:.0f} MB | " + " | ".join(f"{q / 2**20:.0f} MB" for q in quarters) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "eval")
    ap.add_argument("--photos", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=5, help="picks the photos and the pan and zoom of each")
    ap.add_argument("--presets", default="balanced")
    ap.add_argument("--plates", action="store_true", help="also time faces + plates")
    ap.add_argument("--no-deface", action="store_true")
    ap.add_argument("--deface-venv", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of every run, interleaved (deface, veil, ..., deface, veil, ...): fps are medians, "
                         "ratios the median of each round's")  # fmt: skip
    ap.add_argument("--memory-minutes", type=float, default=0)
    ap.add_argument("--memory-size", default="1920x1080")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="veil-video-bench-") as tmp:
        work = Path(tmp)
        clip = work / "kenburns.mp4"
        labels = ken_burns(args.eval_dir, args.photos, args.seconds, clip, seed=args.seed)
        print(f"clip (seed {args.seed}): {len(labels)} frames 1280x720 @ {FPS} fps, {args.photos} shots, "
              f"{sum(len(r) for r in labels)} labelled faces >= {MIN_PX} px over all frames")  # fmt: skip
        runs: list[tuple[str, callable]] = []
        for preset in args.presets.split(","):
            runs.append((f"veil {preset}, faces", lambda p=preset: ("veil", p, "face")))
            if args.plates:
                runs.append((f"veil {preset}, faces + plates", lambda p=preset: ("veil", p, "face,plate")))
        if not args.no_deface:
            exe = deface_venv(args.deface_venv or cache_dir() / f"deface-{DEFACE_VERSION}", False)
            runs.insert(0, (f"deface {DEFACE_VERSION}", lambda: ("deface", None, None)))
        scores: dict[str, dict[str, float]] = {}
        fps: dict[str, list[float]] = {name: [] for name, _w in runs}
        for rnd in range(max(1, args.repeat)):
            for name, what in runs:
                kind, preset, targets = what()
                out = work / f"r{rnd}" / name.replace(" ", "_").replace(",", "").replace("+", "") / "kenburns.mp4"
                out.parent.mkdir(parents=True)
                secs = run_deface(exe, clip, out) if kind == "deface" else run_veil(clip, out, preset, targets)
                if rnd == 0:  # the pixels are scored once: only the timing needs rounds
                    scores[name] = visible(out, labels)
                fps[name].append(len(labels) / secs)
                out.unlink(missing_ok=True)
        base = next((v for name, v in fps.items() if name.startswith("deface")), None)
        print("\n| run | per-frame recall (>= 16 px) | frames with a face visible | longest visible run | fps | vs deface | each round |")
        print("|---|---|---|---|---|---|---|")
        for name, s in scores.items():
            rounds = [f / b for f, b in zip(fps[name], base, strict=True)] if base else []
            ratio = f"{statistics.median(rounds):.2f}x" if base else "-"
            each = ", ".join(f"{r:.2f}x" for r in rounds) if len(rounds) > 1 else "-"
            print(f"| {name} | {s['recall']:.2%} | {s['frames_visible']:.2%} | {s['longest_run']} frames | "
                  f"{statistics.median(fps[name]):.2f} | {ratio} | {each} |")  # fmt: skip
        if args.memory_minutes:
            memory_run(args.memory_minutes, args.memory_size, args.presets.split(",")[0], work)
    print(json.dumps({"note": "fps include start-up and model loading"}))


if __name__ == "__main__":
    main()
