"""Masking cost: time and peak memory of ``mask_detections`` alone, per style.

Usage: python bench/masking.py [--repeat 20]
Prints one table. Scenarios: a 720p video frame with five regions (the per-frame cost
video pays), a 12 MP photo with 20 faces, and the worst case the API allows: 2,000
overlapping regions on a 12 MP photo (three of them the whole photo, so each layer is
one photo-sized cluster). Each scenario runs in its own process, so its peak RSS growth
(``ru_maxrss`` after minus before) is masking's alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

PROBE = r"""
import json, resource, statistics, sys, time
import numpy as np
from veil.detection.types import Detection
from veil.masking import mask_detections
from veil.pipeline.options import Options
scenario, style, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(0)
if scenario == "720p-5":
    W, H = 1280, 720
    dets = [Detection("face", 0.9, (100, 100, 180, 200)), Detection("face", 0.9, (600, 300, 660, 370)),
            Detection("person", 0.9, (550, 250, 750, 700)), Detection("plate", 0.9, (900, 500, 1000, 530)),
            Detection("face", 0.9, (1000, 100, 1030, 140))]
else:
    W, H = 4000, 3000
    n = 20 if scenario == "12mp-20" else 2000
    dets = [] if n == 20 else [Detection(t, 0.9, (5, 5, W - 5, H - 5)) for t in ("person", "plate", "face")]
    for i in range(n - len(dets)):
        x, y, s = rng.uniform(0, W - 50), rng.uniform(0, H - 50), rng.uniform(20, 400)
        t = "face" if n == 20 else ("face", "plate", "person")[i % 3]
        dets.append(Detection(t, 0.9, (x, y, min(W, x + s), min(H, y + 1.2 * s))))
    repeat = 1 if n > 20 else min(repeat, 5)
img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
opts = Options(style=style)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(repeat):
    t0 = time.perf_counter()
    mask_detections(img, dets, opts, rng=rng)
    times.append((time.perf_counter() - t0) * 1000)
grow = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"ms": statistics.median(times), "mb": grow / 1e6, "bpp": grow / (W * H), "regions": len(dets)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20, help="timed runs of the small scenarios (median kept)")
    ap.add_argument("--styles", default="blur,pixelate,fill")
    args = ap.parse_args()
    print(f"| scenario | style | regions | ms (median) | peak RSS growth | bytes per pixel |")
    print("|---|---|---|---|---|---|")
    for scenario in ("720p-5", "12mp-20", "12mp-2000"):
        for style in args.styles.split(","):
            run = subprocess.run([sys.executable, "-c", PROBE, scenario, style, str(args.repeat)], capture_output=True, text=True)
            if run.returncode:
                print(f"| {scenario} | {style} | failed: {run.stderr.strip().splitlines()[-1]} |||")
                continue
            r = json.loads(run.stdout)
            print(f"| {scenario} | {style} | {r['regions']} | {r['ms']:.1f} | {r['mb']:.0f} MB | {r['bpp']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
