"""Box arithmetic shared by the detectors and the metric: intersections, IoU, NMS, and a
sorted-sweep index for finding overlapping boxes among tens of thousands (crowds) without
an N x N matrix."""

from __future__ import annotations

import numpy as np


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



def mostly_inside(a: np.ndarray, b: np.ndarray, share: float = 0.5, chunk: int = 512) -> np.ndarray:
    """Whether each box of ``a`` (N, 4) has at least ``share`` of its area inside one box of
    ``b`` (M, 4); computed ``chunk`` rows at a time, so memory stays ``chunk x M``."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    out = np.zeros(len(a), dtype=bool)
    if len(b) == 0:
        return out
    for i in range(0, len(a), chunk):
        part = a[i : i + chunk]
        out[i : i + chunk] = intersection_matrix(part, b).max(1) >= share * np.maximum(area(part), 1e-9)
    return out


def neighbours(boxes: np.ndarray, iou: float, chunk: int = 1 << 21) -> tuple[np.ndarray, np.ndarray]:
    """For each box of ``boxes`` (N, 4), the boxes it overlaps by IoU above ``iou`` (> 0),
    itself included where its area is not zero, as CSR arrays: box ``i``'s neighbours are
    ``nbrs[ptr[i]:ptr[i + 1]]``. Memory grows with the pairs looked at, never N x N.

    A sorted sweep per width class (powers of two) and horizontal strip: IoU > t bounds the
    partner's width to ``(t * w, w / t**2)`` (``h_b > t * h_a``, as the intersection, at
    most ``w_a * h_b``, exceeds ``t * area_a``; and ``area_b < area_a / t``), and two boxes
    can only overlap where their centres lie within half their summed widths (heights); so
    each box is only compared with boxes of compatible classes whose centres fall in that
    window, found by binary search on (strip, centre x).
    """
    if not iou > 0:
        raise ValueError("neighbours() needs an IoU threshold above 0")
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    n = len(boxes)
    w = (boxes[:, 2] - boxes[:, 0]).astype(np.float64)
    h = (boxes[:, 3] - boxes[:, 1]).astype(np.float64)
    cx = (boxes[:, 0] + boxes[:, 2]).astype(np.float64) / 2
    cy = (boxes[:, 1] + boxes[:, 3]).astype(np.float64) / 2
    cls = np.floor(np.log2(np.maximum(w, 1.0))).astype(np.int64)
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    for k in np.unique(cls):
        members = np.nonzero(cls == k)[0]
        wmax, hmax = float(w[members].max()), float(h[members].max())
        side = max(hmax, 1.0)  # strip height: a window spans few strips
        lo_w, hi_w = iou * iou * 2.0**k, 2.0 ** (k + 1) / iou  # query widths that can match class k
        query = np.nonzero(((w >= lo_w - 1e-3) & (w <= hi_w + 1e-3)) | (w < 1))[0]
        rx = (w[query] + wmax) / 2 + 1e-3
        ry = (h[query] + hmax) / 2 + 1e-3
        x0 = float(cx.min())
        span = float(cx.max()) - x0 + 2 * float(rx.max()) + 1  # strips never share a key
        strip = np.floor(cy[members] / side)
        keys = strip * span + (cx[members] - x0)
        order = np.argsort(keys, kind="stable")
        members, keys = members[order], keys[order]
        s_lo = np.floor((cy[query] - ry) / side)
        ns = (np.floor((cy[query] + ry) / side) - s_lo + 1).astype(np.int64)
        qs = np.repeat(query, ns)  # one row per (query, strip)
        st = np.repeat(s_lo, ns) + (np.arange(int(ns.sum())) - np.repeat(np.cumsum(ns) - ns, ns))
        qx, qr = cx[qs] - x0, np.repeat(rx, ns)
        lo = np.searchsorted(keys, st * span + qx - qr, "left")
        hi = np.searchsorted(keys, st * span + qx + qr, "right")
        counts = hi - lo
        ends = np.cumsum(counts)
        start = 0
        while start < len(qs):  # rows whose windows hold at most ~``chunk`` pairs at a time
            stop = max(start + 1, int(np.searchsorted(ends, (ends[start - 1] if start else 0) + chunk, "right")))
            c = counts[start:stop]
            a = np.repeat(qs[start:stop], c)
            b = members[np.repeat(lo[start:stop], c) + (np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c))]
            near = np.abs(cy[a] - cy[b]) <= (h[a] + hmax) / 2 + 1e-3
            a, b = a[near], b[near]
            x1 = np.maximum(boxes[a, 0], boxes[b, 0])
            y1 = np.maximum(boxes[a, 1], boxes[b, 1])
            x2 = np.minimum(boxes[a, 2], boxes[b, 2])
            y2 = np.minimum(boxes[a, 3], boxes[b, 3])
            inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
            union = np.maximum((boxes[a, 2] - boxes[a, 0]) * (boxes[a, 3] - boxes[a, 1]) + (boxes[b, 2] - boxes[b, 0]) * (boxes[b, 3] - boxes[b, 1]) - inter, 1e-9)
            keep = inter / union > iou
            src.append(a[keep])
            dst.append(b[keep])
            start = stop
    a = np.concatenate(src) if src else np.zeros(0, np.int64)
    b = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    order = np.lexsort((b, a))
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.add.at(ptr, a + 1, 1)
    return np.cumsum(ptr), b[order]
