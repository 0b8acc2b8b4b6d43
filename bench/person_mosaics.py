"""People in larger photos: COCO person photos alone and laid out k x k in one photo.

Usage: python bench/person_mosaics.py [--eval-dir ../shared/eval] [--set persons-coco128] [--grids 1,3,4]
       [--presets balanced,thorough]

Each mosaic puts k x k of the set's photos side by side, each in a 640 x 640 cell (COCO
photos are at most 640 px, so nothing is cropped and every person keeps its pixel size;
boxes and COCO crowd regions move with them), saved as JPEG q95 in a temporary folder and
scored with the project's metric (`veil eval`'s runner); grid 1 is the photos alone. A 4 x 4
mosaic is 2560 x 2560 px (6.6 MP): a whole-photo pass at 640 shrinks it 4x, so only tiles
keep small people visible. Prints one table: per preset and grid, recall overall, for
people >= 32 px and >= 64 px, boxes per *source* photo and the median detection time.

Caveat: the COCO person sets are COCO *train* images, which the COCO-trained person models
(NanoDet, YOLO11-pose) have seen, so absolute recall is optimistic; the drop from single
photos to mosaics is the figure to read.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from face_mosaics import build

from veil.detection.engine import get_engine
from veil.evaluation.labels import load_labels
from veil.evaluation.runner import evaluate

CELL = 640


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-dir", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "eval")
    ap.add_argument("--set", default="persons-coco128", help="a person set under --eval-dir")
    ap.add_argument("--grids", default="1,3,4", help="photos per side of a mosaic (1: the photos alone)")
    ap.add_argument("--presets", default="balanced,thorough")
    args = ap.parse_args()
    images = load_labels(args.eval_dir / args.set / "labels.json")
    print(f"{args.set}: {len(images)} photos; mosaics of 640 px cells")
    print(f"{'preset':<10}{'layout':>8}{'photos':>8}{'people':>8}{'recall':>8}{'>=32 px':>9}{'>=64 px':>9}{'boxes/photo':>13}{'median ms':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        sets = {}
        for g in (int(v) for v in args.grids.split(",")):
            if g == 1:
                sets[g] = images
            else:
                (Path(tmp) / str(g)).mkdir()
                sets[g] = load_labels(build(images, g, Path(tmp) / str(g), target="person", cell=CELL))
        for preset in args.presets.split(","):
            for g, labelled in sets.items():
                res = evaluate(get_engine(preset), labelled, ("person",))
                s = res.scores["person"]
                print(
                    f"{preset:<10}{f'{g}x{g}':>8}{len(labelled):>8}{s.labelled:>8}{s.recall:>8.1%}{s.recall_at_least(32):>9.1%}"
                    f"{s.recall_at_least(64):>9.1%}{s.predicted / (len(labelled) * g * g):>13.2f}{statistics.median(res.ms_per_image):>11.0f}"
                )


if __name__ == "__main__":
    main()
