"""The project's accuracy metric, as defined in the evaluation data's README.

A labelled box is *covered* when the union of the predicted boxes of its target covers at
least half of its area: anonymization cares about pixels hidden, not box IoU. Precision
(only meaningful where labels are complete) counts predicted boxes that overlap a
labelled box by IoU >= 0.3; a prediction lying at least half inside an ignore (COCO
crowd) region counts as neither right nor wrong, as in COCO's own crowd handling: a
crowd region is many people, each of whom may be found.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from veil.detection.boxes import area, intersection_matrix, iou_matrix

BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("<16", 0, 16),
    ("16-32", 16, 32),
    ("32-64", 32, 64),
    (">=64", 64, float("inf")),
)
COVER = 0.5
MATCH_IOU = 0.3
CROWD_INSIDE = 0.5
_GRID = 64  # raster resolution per labelled box for the union-coverage test


def covered_fraction(label: np.ndarray, preds: np.ndarray) -> float:
    """Fraction of ``label`` (xyxy) covered by the union of ``preds`` (N, 4)."""
    x1, y1, x2, y2 = label
    w, h = x2 - x1, y2 - y1
    if w <= 0 or h <= 0 or len(preds) == 0:
        return 0.0
    gx = x1 + (np.arange(_GRID) + 0.5) * w / _GRID
    gy = y1 + (np.arange(_GRID) + 0.5) * h / _GRID
    hit = np.zeros((_GRID, _GRID), dtype=bool)
    for px1, py1, px2, py2 in preds:
        if px2 <= x1 or px1 >= x2 or py2 <= y1 or py1 >= y2:
            continue
        cols = (gx >= px1) & (gx < px2)
        rows = (gy >= py1) & (gy < py2)
        hit |= rows[:, None] & cols[None, :]
    return float(hit.mean())


def inside_fraction(preds: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Share of each predicted box's area inside each region, ``(N, M)``."""
    return intersection_matrix(preds, regions) / np.maximum(area(preds)[:, None], 1e-9)


@dataclass
class TargetScore:
    """Running totals for one target."""

    labelled: int = 0
    covered: int = 0
    by_bucket: dict[str, list[int]] = field(default_factory=lambda: {b[0]: [0, 0] for b in BUCKETS})
    predicted: int = 0
    scored: int = 0  # predictions that count for precision (not inside a crowd region)
    matched: int = 0
    images: int = 0

    def add(self, labels: np.ndarray, ignore: np.ndarray, preds: np.ndarray) -> None:
        self.images += 1
        if len(preds) and len(ignore):
            preds_in_crowd = inside_fraction(preds, ignore).max(1) >= CROWD_INSIDE
            matched = iou_matrix(preds, labels).max(1) >= MATCH_IOU if len(labels) else np.zeros(len(preds), bool)
            # a crowd prediction that also matches a labelled person still counts as right
            preds_scored = preds[~preds_in_crowd | matched]
        else:
            preds_scored = preds
        self.predicted += len(preds)
        self.scored += len(preds_scored)
        for box in labels:
            ok = covered_fraction(box, preds) >= COVER
            self.labelled += 1
            self.covered += ok
            h = box[3] - box[1]
            for name, lo, hi in BUCKETS:
                if lo <= h < hi:
                    self.by_bucket[name][0] += ok
                    self.by_bucket[name][1] += 1
        if len(preds_scored) and len(labels):
            self.matched += int((iou_matrix(preds_scored, labels).max(1) >= MATCH_IOU).sum())

    @property
    def recall(self) -> float:
        return self.covered / self.labelled if self.labelled else float("nan")

    def recall_at_least(self, min_height: float) -> float:
        c = n = 0
        for name, lo, _ in BUCKETS:
            if lo >= min_height:
                c += self.by_bucket[name][0]
                n += self.by_bucket[name][1]
        return c / n if n else float("nan")

    @property
    def precision(self) -> float:
        return self.matched / self.scored if self.scored else float("nan")

    @property
    def boxes_per_image(self) -> float:
        return self.predicted / self.images if self.images else 0.0

    def to_json(self) -> dict:
        return {
            "labelled": self.labelled,
            "covered": self.covered,
            "recall": self.recall,
            "recall_by_height": {k: (v[0] / v[1] if v[1] else None) for k, v in self.by_bucket.items()},
            "count_by_height": {k: v[1] for k, v in self.by_bucket.items()},
            "recall_16px_up": self.recall_at_least(16),
            "recall_32px_up": self.recall_at_least(32),
            "predicted": self.predicted,
            "scored": self.scored,
            "matched": self.matched,
            "boxes_per_image": self.boxes_per_image,
            "precision": self.precision,
            "images": self.images,
        }
