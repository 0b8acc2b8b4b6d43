"""Faces in larger photos: the face set's photos laid out k x k in one photo.

Usage: python bench/face_mosaics.py [--eval-dir ../shared/eval] [--grid 3] [--presets balanced,thorough]

The labelled face photos are small (0.12 MP), so they never show what a preset does with
faces that are small *in a large photo*. Here each mosaic puts k x k of them side by side
(each in a 400 x 400 cell, faces keep their pixel size, labels move with them), saved as
JPEG q95 in a temporary folder, and scores them with the project's metric (`veil eval`'s
runner); the few photos larger than a cell (7 of 250) are cropped to it, and faces cut by
the crop count with their visible part. Run it with VEIL_LICENSES=permissive for the
permissive face plan. Prints one table: per preset, recall overall, by face height, boxes per *source*
photo (comparable with the face set's own figure) and the median detection time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from veil.detection.engine import get_engine
from veil.evaluation.labels import load_labels
from veil.evaluation.runner import evaluate
from veil.imageio import load_image

CELL = 400


def build(images: list, grid: int, out: Path, target: str = "face", cell: int = CELL) -> Path:
    """Write the mosaics and their labels.json into ``out``; return the labels path. Each
    photo fills a ``cell`` x ``cell`` square (cropped to it), its ``target`` boxes (and
    ignore regions) moved with it."""
    labels = []
    per = grid * grid
    for m in range(len(images) // per):
        canvas = np.full((cell * grid, cell * grid, 3), 128, dtype=np.uint8)
        boxes = []
        for i, im in enumerate(images[m * per : (m + 1) * per]):
            rgb = load_image(im.path).rgb[:cell, :cell]
            oy, ox = (i // grid) * cell, (i % grid) * cell
            canvas[oy : oy + rgb.shape[0], ox : ox + rgb.shape[1]] = rgb
            for group, ignore in ((im.boxes, False), (im.ignore, True)):
                for x1, y1, x2, y2 in group.get(target, np.zeros((0, 4))):
                    x1, y1, x2, y2 = (min(float(v), cell) for v in (x1, y1, x2, y2))
                    if x2 - x1 >= 1 and y2 - y1 >= 1:
                        boxes.append({"cls": target, "x1": x1 + ox, "y1": y1 + oy, "x2": x2 + ox, "y2": y2 + oy, "ignore": ignore})
        name = f"mosaic{m:03d}.jpg"
        Image.fromarray(canvas).save(out / name, quality=95)
        labels.append({"image": name, "width": canvas.shape[1], "height": canvas.shape[0], "boxes": boxes})
    path = out / "labels.json"
    path.write_text(json.dumps(labels), encoding="utf-8")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-dir", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "eval")
    ap.add_argument("--grid", type=int, default=3, help="photos per side of a mosaic (3: 1200 x 1200 px)")
    ap.add_argument("--presets", default="balanced,thorough")
    args = ap.parse_args()
    images = load_labels(args.eval_dir / "faces-dev" / "labels.json")
    per = args.grid * args.grid
    print(f"{len(images) // per} mosaics of {args.grid} x {args.grid} photos, {CELL * args.grid} x {CELL * args.grid} px")
    print(f"{'preset':<10}{'recall':>8}{'<16 px':>8}{'>=16 px':>9}{'>=32 px':>9}{'boxes/photo':>13}{'median ms':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        mosaic_labels = load_labels(build(images, args.grid, Path(tmp)))
        for preset in args.presets.split(","):
            res = evaluate(get_engine(preset), mosaic_labels, ("face",))
            s = res.scores["face"]
            c, n = s.by_bucket["<16"]
            print(
                f"{preset:<10}{s.recall:>8.1%}{c / max(n, 1):>8.1%}{s.recall_at_least(16):>9.1%}{s.recall_at_least(32):>9.1%}"
                f"{s.predicted / (len(mosaic_labels) * per):>13.2f}{statistics.median(res.ms_per_image):>11.0f}"
            )


if __name__ == "__main__":
    main()
