"""Crowds: 1,000 and 2,000 real faces of 12-15 px on one 1920 x 1080 photo.

Usage: python bench/crowds.py [--eval-dir ../shared/eval] [--faces 1000,2000] [--presets balanced,thorough]
       [--targets face,plate] [--seed 0] [--save DIR]

Real faces are cropped from the face set (`faces-dev`, by its labels: boxes at least 20 px
tall, with the head around them, 1.6x the box), shrunk so the face is 12-15 px tall and
pasted, one per cell of a jittered grid (no two overlap), onto a blurred real street photo (the first `plates-us`
photo, Gaussian sigma 6, scaled to 1920 x 1080). Placement and sizes come from `--seed`,
so the scene and its boxes are the same on every run. Each (preset, faces) row runs
`veil.pipeline.core.anonymize` (the one pipeline: detect, mask, and `thorough`'s verify
pass) in a fresh process after a warm-up on a small photo, so the memory figure is that
photo's own peak (models included).

Prints one table: preset, faces, recall (a pasted face counts as hidden when the union of
the hidden regions, grown by the masking margins as `veil eval` does, covers half of it),
hidden regions, verify's new faces (`thorough`), seconds (anonymize, models already
loaded), the CPU seconds the process spent on it (user + sys: contention on a shared
machine distorts them less) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

W, H = 1920, 1080
MIN_SRC_PX = 20  # faces shrunk from at least this height still look like faces
CONTEXT = 1.6  # each crop is the face's box grown by this factor: the head around the face


def face_crops(eval_dir: Path) -> list[tuple[np.ndarray, tuple[float, float, float, float]]]:
    """Every labelled face of the face set at least ``MIN_SRC_PX`` tall and not near the
    photo's edge: a square RGB crop ``CONTEXT`` times the face's size, and the face's box in
    it as fractions of the crop."""
    from veil.evaluation.labels import load_labels
    from veil.imageio import load_image

    crops = []
    for im in load_labels(eval_dir / "faces-dev" / "labels.json"):
        rgb = None
        for x1, y1, x2, y2 in im.boxes.get("face", np.zeros((0, 4))):
            x1, y1, x2, y2 = (int(round(float(v))) for v in (x1, y1, x2, y2))
            if y2 - y1 < MIN_SRC_PX or x1 <= 0 or y1 <= 0 or x2 >= im.width or y2 >= im.height:
                continue
            rgb = load_image(im.path).rgb if rgb is None else rgb
            # the face with its head around it (hair, ears, neck), as a face in a crowd shows
            cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, CONTEXT * max(x2 - x1, y2 - y1) / 2
            X1, Y1, X2, Y2 = int(cx - half), int(cy - half), int(cx + half), int(cy + half)
            if X1 < 0 or Y1 < 0 or X2 > rgb.shape[1] or Y2 > rgb.shape[0]:
                continue
            crops.append((np.ascontiguousarray(rgb[Y1:Y2, X1:X2]), ((x1 - X1) / (X2 - X1), (y1 - Y1) / (Y2 - Y1), (x2 - X1) / (X2 - X1), (y2 - Y1) / (Y2 - Y1))))
    return crops


def scene(eval_dir: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The crowd photo and its face boxes ``(n, 4)``."""
    from veil.evaluation.labels import load_labels
    from veil.imageio import load_image

    rng = np.random.default_rng(seed)
    street = load_image(load_labels(eval_dir / "plates-us" / "labels.json")[0].path).rgb
    canvas = cv2.GaussianBlur(cv2.resize(street, (W, H), interpolation=cv2.INTER_LINEAR), (0, 0), 6)
    crops = face_crops(eval_dir)
    cols = int(np.ceil(np.sqrt(n * W / H)))
    rows = int(np.ceil(n / cols))
    cw, ch = W / cols, H / rows
    cells = rng.permutation(rows * cols)[:n]
    boxes = []
    for cell in cells:
        crop, (fx1, fy1, fx2, fy2) = crops[int(rng.integers(len(crops)))]
        fh = int(rng.integers(12, 16))  # the face's height in the crowd
        side = min(int(round(fh / (fy2 - fy1))), int(min(cw, ch)))
        head = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
        r, c = divmod(int(cell), cols)
        x = int(c * cw + rng.uniform(0, max(cw - side, 0)))
        y = int(r * ch + rng.uniform(0, max(ch - side, 0)))
        canvas[y : y + side, x : x + side] = head
        boxes.append((x + fx1 * side, y + fy1 * side, x + fx2 * side, y + fy2 * side))
    return canvas, np.array(boxes, dtype=np.float32)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one(eval_dir: Path, preset: str, n: int, targets: tuple[str, ...], seed: int, save: Path | None) -> dict:
    """Run one row (in this process) and return its figures."""
    from veil.detection.engine import get_engine
    from veil.evaluation.metric import covered_fraction
    from veil.evaluation.runner import grow
    from veil.imageio import load_image
    from veil.masking.shapes import margin_for
    from veil.pipeline.core import anonymize
    from veil.pipeline.options import Options

    rgb, faces = scene(eval_dir, n, seed)
    options = Options(preset=preset, targets=targets)
    get_engine(preset).warm_up(targets)
    image = load_image(cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes())
    t0, c0 = time.perf_counter(), _cpu()
    out, report = anonymize(image, options, engine=get_engine(preset))
    seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    hidden = np.array([grow(r.box, margin_for(r.target, 1.3)) for r in report.regions], np.float32).reshape(-1, 4)
    found = sum(covered_fraction(b, hidden) >= 0.5 for b in faces)
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(save / f"crowd{n}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(save / f"crowd{n}-{preset}.jpg"), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
    return {
        "preset": preset,
        "faces": n,
        "recall": found / n,
        "regions": len(report.regions),
        "verify_new": report.verify_found,
        "seconds": seconds,
        "cpu_s": cpu,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-dir", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "eval")
    ap.add_argument("--faces", default="1000,2000")
    ap.add_argument("--presets", default="balanced,thorough")
    ap.add_argument("--targets", default="face,plate", help="what the pipeline is asked to hide (default: veil's defaults)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", type=Path, help="write each crowd photo and its anonymized output here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # preset:faces, run in this process (the child)
    args = ap.parse_args()
    targets = tuple(args.targets.split(","))
    if args.one:
        preset, n = args.one.split(":")
        print(json.dumps(one(args.eval_dir, preset, int(n), targets, args.seed, args.save)))
        return
    print(f"crowds of 12-15 px faces on {W} x {H}, targets {','.join(targets)}, seed {args.seed}")
    print(f"{'preset':<10}{'faces':>7}{'recall':>9}{'regions':>9}{'verify new':>12}{'seconds':>9}{'CPU s':>7}{'peak MB':>9}")
    for preset in args.presets.split(","):
        for n in (int(v) for v in args.faces.split(",")):
            cmd = [sys.executable, __file__, "--one", f"{preset}:{n}", "--eval-dir", str(args.eval_dir), "--targets", args.targets, "--seed", str(args.seed)]
            if args.save:
                cmd += ["--save", str(args.save)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{preset:<10}{n:>7}  failed (exit {res.returncode}): {res.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            vn = "-" if r["verify_new"] is None else str(r["verify_new"])
            print(f"{preset:<10}{n:>7}{r['recall']:>9.1%}{r['regions']:>9}{vn:>12}{r['seconds']:>9.2f}{r['cpu_s']:>7.1f}{r['peak_mb']:>9.0f}")


if __name__ == "__main__":
    main()
