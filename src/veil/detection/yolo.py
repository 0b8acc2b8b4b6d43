"""Running converted Ultralytics YOLO models (plates, person pose) with letterboxing, tiling
and crops (a second look at regions of the photo, e.g. around vehicles)."""

from __future__ import annotations

import math

import numpy as np

from veil.detection.boxes import nms
from veil.detection.types import Detection
from veil.inference.session import get_session
from veil.models.preprocess import letterbox, planar_blob  # noqa: F401  (letterbox: also imported from here)


class Yolo:
    """One YOLO model; ``__call__`` returns detections in image pixels.

    Output layout (from veil's converter): ``[1, 4 + nc (+ K*3), N]`` with cx, cy, w, h in
    input pixels, sigmoid class scores, then decoded keypoints (x, y, conf).
    """

    def __init__(self, model: str, target: str, class_id: int = 0, nkpt: int = 0):
        self.model = model
        self.target = target
        self.class_id = class_id
        self.nkpt = nkpt
        self.session = get_session(model)
        self.input = self.session.get_inputs()[0].name

    def run(self, rgb: np.ndarray, size: int, threshold: float) -> list[Detection]:
        img, r, _ = letterbox(rgb, size)
        blob = planar_blob(img, 255.0)
        out = self.session.run(None, {self.input: blob})[0][0]
        nc = out.shape[0] - 4 - self.nkpt * 3
        scores = out[4 + self.class_id]
        idx = np.where(scores > threshold)[0]
        if len(idx) == 0:
            return []
        cx, cy, w, h = out[0, idx], out[1, idx], out[2, idx], out[3, idx]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1) / r
        sc = scores[idx]
        keep = nms(boxes, sc, 0.5)
        kpts = None
        if self.nkpt:
            kpts = out[4 + nc :, idx].T.reshape(-1, self.nkpt, 3).copy()
            kpts[:, :, :2] /= r
        H, W = rgb.shape[:2]
        return [
            Detection(
                self.target,
                float(sc[k]),
                tuple(float(v) for v in boxes[k]),
                keypoints=None if kpts is None else kpts[k].astype(np.float32),
                source=self.model,
            ).clipped(W, H)
            for k in keep
        ]

    def regions(self, rgb: np.ndarray, regions: list[tuple[tuple[int, int, int, int], float]], threshold: float) -> list[Detection]:
        """Run on crops of ``rgb``: ``regions`` holds ``((x0, y0, x1, y1), scale)``, the crop
        in photo pixels and the factor it is resized by for the model (2.0 = upscaled)."""
        H, W = rgb.shape[:2]
        out: list[Detection] = []
        for (x0, y0, x1, y1), scale in regions:
            crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
            if crop.shape[0] < 2 or crop.shape[1] < 2:
                continue
            n = max(32, round(max(x1 - x0, y1 - y0) * scale))
            out += [d.scaled(1, 1, x0, y0).clipped(W, H) for d in self.run(crop, n, threshold)]
        return out


def tile_regions(
    width: int, height: int, size: int, grid: int = 2, overlap: float = 0.2, min_scale: float = 0.0
) -> list[tuple[tuple[int, int, int, int], float]]:
    """Overlapping tiles, so small objects in large photos get pixels, as ``((x0, y0, x1,
    y1), scale)`` for :meth:`Yolo.regions`: a fixed ``grid x grid``, or with ``min_scale`` as
    many tiles as it takes for each to be shrunk by at most that factor into an input of
    ``size`` (none where the whole photo already is)."""
    if min_scale > 0:
        side = size / min_scale  # the largest tile the model sees at >= min_scale
        nx, ny = (max(1, math.ceil((n / side - overlap) / (1 - overlap))) for n in (width, height))
        if nx == ny == 1:
            return []
    else:
        nx = ny = grid
    # the smallest tiles that cover the photo with ``overlap`` between neighbours
    tw, th = (min(n, math.ceil(n / (k - (k - 1) * overlap))) for n, k in ((width, nx), (height, ny)))
    scale = min_scale if min_scale > 0 else size / max(tw, th)
    xs = [round(i * (width - tw) / (nx - 1)) if nx > 1 else 0 for i in range(nx)]
    ys = [round(j * (height - th) / (ny - 1)) if ny > 1 else 0 for j in range(ny)]
    return [((x0, y0, x0 + tw, y0 + th), scale) for y0 in ys for x0 in xs]


def merge_regions(
    boxes: np.ndarray, width: int, height: int, margin: float = 0.1, values: np.ndarray | None = None
) -> list[tuple[tuple[int, int, int, int], float]]:
    """Boxes ``(N, 4)`` grown by ``margin`` of their size on each side, clipped to the photo,
    and merged while any two overlap (one crop per group: no pixel is looked at twice).
    Returns ``(region, value)`` pairs, ``value`` the largest of its boxes' ``values`` (0
    without)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    vals = np.zeros(len(boxes), np.float32) if values is None else np.asarray(values, dtype=np.float32)
    rs: list[list[float]] = []
    for (x1, y1, x2, y2), v in zip(boxes, vals):
        mw, mh = (x2 - x1) * margin, (y2 - y1) * margin
        rs.append([max(0.0, x1 - mw), max(0.0, y1 - mh), min(float(width), x2 + mw), min(float(height), y2 + mh), float(v)])
    merged = True
    while merged:
        merged = False
        out: list[list[float]] = []
        for r in rs:
            for o in out:
                if r[0] < o[2] and o[0] < r[2] and r[1] < o[3] and o[1] < r[3]:
                    o[:] = [min(o[0], r[0]), min(o[1], r[1]), max(o[2], r[2]), max(o[3], r[3]), max(o[4], r[4])]
                    merged = True
                    break
            else:
                out.append(r)
        rs = out
    return [
        ((int(x1), int(y1), int(math.ceil(x2)), int(math.ceil(y2))), v)
        for x1, y1, x2, y2, v in rs
        if x2 - x1 >= 1 and y2 - y1 >= 1
    ]
