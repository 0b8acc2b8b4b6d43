"""The input geometry the YOLO and NanoDet models see, shared by calibration and inference.

int8 calibration (:mod:`veil.models.convert.quantize`) must feed a model exactly what
detection will (:mod:`veil.detection.yolo`, :mod:`veil.detection.nanodet`), so the
letterboxes live here, below both: the model layer never imports the detection layer,
even lazily.
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


#: NanoDet's input normalisation (BGR order)
MEAN_BGR = np.array([103.53, 116.28, 123.675], dtype=np.float32)
STD_BGR = np.array([57.375, 57.12, 58.395], dtype=np.float32)


def preprocess_nanodet(
    rgb_uint8: np.ndarray, size: int = 416, square: bool = True
) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Letterbox an RGB ``uint8`` image into the model's input tensor.

    The long side is scaled to ``size`` and the image is centred on a canvas of the mean
    colour (zero after normalisation): ``size x size`` with ``square``, else only padded up
    to multiples of 32 (less work for wide photos; the converted model takes any such size).
    Returns ``(tensor [1, 3, H, W] float32, scale, (pad_x, pad_y))``; a point of the input
    maps back to the photo as ``(x - pad_x) / scale, (y - pad_y) / scale``.
    """
    if rgb_uint8.ndim != 3 or rgb_uint8.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {rgb_uint8.shape}")
    h, w = rgb_uint8.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    img = cv2.resize(rgb_uint8, (nw, nh), interpolation=interp) if (nw, nh) != (w, h) else rgb_uint8
    if square:
        cw = ch = size
    else:
        cw, ch = int(math.ceil(nw / 32) * 32), int(math.ceil(nh / 32) * 32)
    px, py = (cw - nw) // 2, (ch - nh) // 2
    tensor = np.zeros((1, 3, ch, cw), dtype=np.float32)
    # plane by plane into the tensor (the same float32 arithmetic as a transposed
    # whole-image cast, at a fraction of its cost on large inputs)
    for c, (plane, mean, std) in enumerate(zip(reversed(cv2.split(img)), MEAN_BGR, STD_BGR)):
        dst = tensor[0, c, py : py + nh, px : px + nw]
        np.subtract(plane, mean, out=dst, dtype=np.float32)
        np.divide(dst, std, out=dst)
    return tensor, scale, (px, py)
