"""PP-OCRv4 text detection: the permissively licensed route to licence plates.

The text detector finds every line of text, plates included; :mod:`veil.detection.engine`
keeps the text that sits on a vehicle (or, with no vehicle in view, text shaped like a
plate). Output is a probability map; boxes come from its connected regions, grown
("unclipped") as PP-OCR does because the map is trained on shrunken text.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from veil.detection.types import Detection
from veil.inference.session import get_session

_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class TextDetector:
    model = "ppocr-det"

    def __init__(self) -> None:
        self.session = get_session(self.model)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, rgb: np.ndarray, size: int = 960, threshold: float = 0.3, box_threshold: float = 0.5, unclip: float = 1.6) -> list[Detection]:
        h, w = rgb.shape[:2]
        r = min(1.0, size / max(h, w))
        nw, nh = max(32, int(round(w * r / 32)) * 32), max(32, int(round(h * r / 32)) * 32)
        img = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
        x = (img[:, :, ::-1].astype(np.float32) / 255.0 - _MEAN) / _STD  # BGR, as trained
        prob = self.session.run(None, {self.input: np.ascontiguousarray(x.transpose(2, 0, 1)[None])})[0][0, 0]
        mask = (prob > threshold).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        sx, sy = w / nw, h / nh
        out = []
        for c in contours:
            if len(c) < 3:
                continue
            x0, y0, bw, bh = cv2.boundingRect(c)
            region = np.zeros((bh, bw), dtype=np.uint8)
            cv2.drawContours(region, [c - [x0, y0]], -1, 1, -1)
            score = float(prob[y0 : y0 + bh, x0 : x0 + bw][region > 0].mean())
            if score < box_threshold:
                continue
            (cx, cy), (rw, rh), angle = cv2.minAreaRect(c)
            area, perim = rw * rh, 2 * (rw + rh)
            if perim <= 0 or min(rw, rh) < 2:
                continue
            d = area * unclip / perim
            quad = cv2.boxPoints(((cx, cy), (rw + 2 * d, rh + 2 * d), angle)).astype(np.float32)
            quad[:, 0] *= sx
            quad[:, 1] *= sy
            box = (float(quad[:, 0].min()), float(quad[:, 1].min()), float(quad[:, 0].max()), float(quad[:, 1].max()))
            out.append(Detection("text", score, box, polygon=quad, source=self.model).clipped(w, h))
        return out


def plate_like(d: Detection) -> bool:
    """Text whose outline has a plate's proportions (one or two lines of characters)."""
    if d.polygon is not None:
        (_, _), (a, b), _ = cv2.minAreaRect(d.polygon.astype(np.float32))
        long, short = max(a, b), max(min(a, b), 1e-6)
    else:
        long, short = max(d.width, d.height), max(min(d.width, d.height), 1e-6)
    return 1.4 <= long / short <= 7.0 and not math.isnan(long)
