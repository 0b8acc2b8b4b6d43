"""Run the engine over a labelled set and score it with the project metric."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from veil.detection.engine import Engine
from veil.evaluation.labels import LabelledImage
from veil.evaluation.metric import TargetScore
from veil.imageio import load_image
from veil.masking.shapes import FACE_LIKE, margin_for

#: Eval measures the pixels the anonymizer would really hide, so every box grows by the
#: same margin the masking stage applies (``--margin`` for faces and heads).


def grow(box: Sequence[float], margin: float) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = (x2 - x1) * margin, (y2 - y1) * margin
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


@dataclass
class EvalResult:
    preset: str
    scores: dict[str, TargetScore]
    ms_per_image: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "preset": self.preset,
            "images": len(self.ms_per_image),
            "median_ms_per_image": float(np.median(self.ms_per_image)) if self.ms_per_image else None,
            "targets": {t: s.to_json() for t, s in self.scores.items()},
        }


def evaluate(
    engine: Engine,
    images: list[LabelledImage],
    targets: Sequence[str],
    face_margin: float = 1.3,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    scores = {t: TargetScore() for t in targets}
    times: list[float] = []
    for n, im in enumerate(images):
        rgb = load_image(im.path).rgb
        t0 = time.perf_counter()
        dets = engine.detect(rgb, targets)
        times.append((time.perf_counter() - t0) * 1000)
        for t in targets:
            kinds = FACE_LIKE if t == "face" else (t,)
            preds = [grow(d.box, margin_for(d.target, face_margin)) for d in dets if d.target in kinds]
            arr = np.array(preds, dtype=np.float32).reshape(-1, 4)
            scores[t].add(im.boxes.get(t, np.zeros((0, 4), np.float32)), im.ignore.get(t, np.zeros((0, 4), np.float32)), arr)
        if progress:
            progress(n + 1)
    return EvalResult(engine.preset.name, scores, times)


def pooled(results: list[EvalResult]) -> EvalResult:
    """All sets scored as one (e.g. both COCO person folders together)."""
    scores: dict[str, TargetScore] = {}
    for r in results:
        for t, s in r.scores.items():
            acc = scores.setdefault(t, TargetScore())
            acc.labelled += s.labelled
            acc.covered += s.covered
            acc.predicted += s.predicted
            acc.scored += s.scored
            acc.matched += s.matched
            acc.images += s.images
            for k, (c, n) in s.by_bucket.items():
                acc.by_bucket[k][0] += c
                acc.by_bucket[k][1] += n
    return EvalResult(results[0].preset if results else "", scores, [t for r in results for t in r.ms_per_image])
