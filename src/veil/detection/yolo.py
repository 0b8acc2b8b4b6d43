"""Running converted Ultralytics YOLO models (plates, person pose) with letterboxing and tiling."""

from __future__ import annotations

import math

import cv2
import numpy as np

from veil.detection.boxes import nms
from veil.detection.types import Detection
from veil.inference.session import get_session


def letterbox(rgb: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize the long side to ``size`` (a multiple of 32 on both sides, no square padding)."""
    h, w = rgb.shape[:2]
    r = size / max(h, w)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    img = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
    pw, ph = int(math.ceil(nw / 32) * 32), int(math.ceil(nh / 32) * 32)
    canvas = np.full((ph, pw, 3), 114, dtype=np.uint8)
    canvas[:nh, :nw] = img
    return canvas, r, (nw, nh)


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
        blob = np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
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

    def tiled(self, rgb: np.ndarray, size: int, threshold: float, grid: int = 2, overlap: float = 0.2) -> list[Detection]:
        """Run on ``grid x grid`` overlapping tiles so small objects in large photos get pixels."""
        H, W = rgb.shape[:2]
        tw, th = int(W / (grid - (grid - 1) * overlap)), int(H / (grid - (grid - 1) * overlap))
        out: list[Detection] = []
        for gy in range(grid):
            for gx in range(grid):
                x0 = min(W - tw, int(gx * tw * (1 - overlap)))
                y0 = min(H - th, int(gy * th * (1 - overlap)))
                tile = np.ascontiguousarray(rgb[y0 : y0 + th, x0 : x0 + tw])
                for d in self.run(tile, size, threshold):
                    d = d.scaled(1, 1, x0, y0)
                    # Objects cut by an inner tile edge are left to the full-image pass.
                    out.append(d)
        return out
