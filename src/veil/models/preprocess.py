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
