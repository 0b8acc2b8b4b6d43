"""The input geometry YOLO models see, shared by calibration and inference.

int8 calibration (:mod:`veil.models.convert.quantize`) must feed a model exactly what
detection will (:mod:`veil.detection.yolo`), so the letterbox lives here, below both: the
model layer never imports the detection layer, even lazily.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


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


def planar_blob(img: np.ndarray, divisor: float = 1.0, *, bgr: bool = False) -> np.ndarray:
    """``img`` (HxWx3 uint8) as the float32 ``1x3xHxW`` tensor the models take, divided by
    ``divisor``; ``bgr`` reverses the channels. Split into planes first: numpy's transposed
    cast of a video frame costs ~7x as much."""
    planes = cv2.split(img)
    out = np.empty((1, 3, *img.shape[:2]), np.float32)
    for c, plane in enumerate(reversed(planes) if bgr else planes):
        out[0, c] = plane
    if divisor != 1.0:
        out /= np.float32(divisor)
    return out
