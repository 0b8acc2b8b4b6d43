"""Hard shot cuts, so that no track (nor its fill) crosses from one shot into the next.

Written here rather than taken from PySceneDetect: its detectors need ``opencv-python``,
which cannot be installed beside the headless OpenCV veil runs on servers. The rule is
its content detector's: the mean change of hue, saturation and value between two
consecutive (downscaled) frames, a cut when it jumps above a threshold.
"""

from __future__ import annotations

import cv2
import numpy as np

#: 16:9 frames of 640, 1280, 1920 or 3840 px shrink by a whole factor: OpenCV's fast path
_SIZE = (80, 45)


class CutDetector:
    """Feed frames in order; :meth:`is_cut` says whether a frame starts a new shot."""

    def __init__(self, threshold: float = 30.0, min_shot: int = 3):
        self.threshold = threshold
        self.min_shot = min_shot
        self._prev: np.ndarray | None = None
        self._since = 0

    def score(self, rgb: np.ndarray) -> float:
        """Mean absolute HSV change against the previous frame (0-255 scale); 0 for the first."""
        small = cv2.resize(rgb, _SIZE, interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV).astype(np.int16)
        prev, self._prev = self._prev, hsv
        if prev is None:
            return 0.0
        diff = np.abs(hsv - prev)
        diff[..., 0] = np.minimum(diff[..., 0], 180 - diff[..., 0]) * (255 / 90)  # hue is circular (0-179)
        return float(diff.mean())

    def is_cut(self, rgb: np.ndarray) -> bool:
        """True when ``rgb`` starts a new shot (never twice within ``min_shot`` frames)."""
        first = self._prev is None
        s = self.score(rgb)
        self._since += 1
        if first or s < self.threshold or self._since < self.min_shot:
            return False
        self._since = 0
        return True
