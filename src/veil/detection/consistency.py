"""The head signal: a person whose head shows while no face was found there.

Face detectors miss faces seen from behind, in profile, heavily blurred or very small;
a person detector often still sees the body and the head's keypoints. Returning those
heads as ``head`` detections lets the masking stage hide them anyway.
"""

from __future__ import annotations

import numpy as np

from veil.detection.types import Detection

_HEAD_KPTS = slice(0, 5)  # COCO: nose, eyes, ears
_KPT_CONF = 0.5


def head_box(person: Detection) -> tuple[float, float, float, float] | None:
    """Where the head of ``person`` is, from keypoints or else the top of the box."""
    x1, y1, x2, y2 = person.box
    bw, bh = x2 - x1, y2 - y1
    if person.keypoints is not None:
        k = person.keypoints[_HEAD_KPTS]
        vis = k[k[:, 2] > _KPT_CONF]
        if len(vis) == 0:
            return None  # head not visible (cut off or turned away out of frame)
        cx, cy = float(vis[:, 0].mean()), float(vis[:, 1].mean())
        spread = float(max(np.ptp(vis[:, 0]), np.ptp(vis[:, 1]))) if len(vis) > 1 else 0.0
        size = max(spread * 2.0, 0.15 * bh, 0.3 * min(bw, bh), 8.0)
        size = min(size, max(bw, 8.0))
        return (cx - size / 2, cy - size * 0.55, cx + size / 2, cy + size * 0.45)
    if bh < 1.3 * bw:
        return None  # not an upright figure: the top of the box need not be a head
    size = max(0.22 * bw, 0.14 * bh)
    cx = (x1 + x2) / 2
    return (cx - size / 2, y1, cx + size / 2, y1 + size)


def heads_without_faces(persons: list[Detection], faces: list[Detection]) -> list[Detection]:
    """``head`` detections for persons whose head holds no detected face."""
    out = []
    for p in persons:
        hb = head_box(p)
        if hb is None:
            continue
        hx1, hy1, hx2, hy2 = hb
        covered = False
        for f in faces:
            fx, fy = (f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2
            if hx1 <= fx <= hx2 and hy1 <= fy <= hy2:
                covered = True
                break
        if not covered:
            out.append(Detection("head", float(p.score), hb, source=f"{p.source}:head"))
    return out
