"""Box arithmetic shared by all detectors: IoU, NMS and ensemble merging."""

from __future__ import annotations

import numpy as np

from veil.detection.types import Detection


def intersection_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection area of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), xyxy."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    return np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)


def area(a: np.ndarray) -> np.ndarray:
    return (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), xyxy."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    inter = intersection_matrix(a, b)
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best first."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores)
    keep: list[int] = []
    while len(order):
        i = order[0]
        keep.append(int(i))
        if len(order) == 1:
            break
        ious = iou_matrix(boxes[i : i + 1], boxes[order[1:]])[0]
        order = order[1:][ious <= iou]
    return np.array(keep, dtype=np.int64)


def boxes_of(dets: list[Detection]) -> np.ndarray:
    return np.array([d.box for d in dets], dtype=np.float32).reshape(-1, 4)


def merge(dets: list[Detection], iou: float = 0.4, fuse: bool = True) -> list[Detection]:
    """Merge overlapping detections of one target from several passes or models.

    Each cluster keeps its best-scoring member; with ``fuse`` the box becomes the
    union-leaning score-weighted mean of the cluster (hiding a bit more is safer than a
    bit less), and the score grows with agreement between passes.
    """
    if len(dets) <= 1:
        return list(dets)
    boxes = boxes_of(dets)
    scores = np.array([d.score for d in dets], dtype=np.float32)
    order = np.argsort(-scores)
    used = np.zeros(len(dets), dtype=bool)
    ious = iou_matrix(boxes, boxes)
    out: list[Detection] = []
    for i in order:
        if used[i]:
            continue
        members = np.where((ious[i] > iou) & ~used)[0]
        used[members] = True
        best = dets[i]
        if fuse and len(members) > 1:
            w = scores[members][:, None]
            mean = (boxes[members] * w).sum(0) / w.sum()
            outer = np.array([boxes[members, 0].min(), boxes[members, 1].min(), boxes[members, 2].max(), boxes[members, 3].max()])
            fused = 0.5 * mean + 0.5 * outer
            p_miss = float(np.prod(1.0 - np.clip(scores[members], 0, 0.999)))
            best = Detection(
                target=best.target,
                score=max(float(best.score), 1.0 - p_miss),
                box=tuple(float(v) for v in fused),
                landmarks=best.landmarks,
                keypoints=best.keypoints,
                polygon=best.polygon,
                source=best.source,
                extra={**best.extra, "votes": int(len(members))},
            )
        out.append(best)
    return out
