"""Per-preset, per-target detection latency on the labelled dev photos.

Usage: python bench/detect_latency.py [--eval-dir ../shared/eval] [--limit 40]
Prints one table: median ms per image for each preset and target, on each photo set,
measured in one run (models loaded and warmed up before timing).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from veil.detection.engine import get_engine
from veil.evaluation.labels import load_labels
from veil.imageio import load_image

SETS = {"faces-dev": "face", "plates-us": "plate", "persons-coco128": "person"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-dir", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "eval")
    ap.add_argument("--limit", type=int, default=40, help="photos per set")
    ap.add_argument("--presets", default="fast,balanced,thorough")
    args = ap.parse_args()
    presets = args.presets.split(",")
    rows = []
    for folder, target in SETS.items():
        images = load_labels(args.eval_dir / folder / "labels.json")[: args.limit]
        rgbs = [load_image(im.path).rgb for im in images]
        mp = statistics.median(r.shape[0] * r.shape[1] / 1e6 for r in rgbs)
        for preset in presets:
            eng = get_engine(preset)
            eng.detect(rgbs[0], (target,))  # warm-up
            times = []
            for rgb in rgbs:
                t0 = time.perf_counter()
                eng.detect(rgb, (target,))
                times.append((time.perf_counter() - t0) * 1000)
            rows.append((folder, f"{mp:.2f}", target, preset, statistics.median(times), max(times)))
    print(f"{'set':<18}{'MP':>6}  {'target':<8}{'preset':<10}{'median ms':>10}{'max ms':>9}")
    for r in rows:
        print(f"{r[0]:<18}{r[1]:>6}  {r[2]:<8}{r[3]:<10}{r[4]:>10.1f}{r[5]:>9.1f}")


if __name__ == "__main__":
    main()
