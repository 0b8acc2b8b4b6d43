"""int8 YOLO models: veil's own ONNX conversion, then onnxruntime's static quantizer.

A medium-sized detector (YOLO11m) is the cost of a whole photo's detection on a CPU; its
convolutions in int8 run ~1.7x faster with the same recall on the face set. Only the
convolutions are quantized (weights per channel, activations per tensor), so the box
decoding and the activations stay in float. Activation ranges come from photos of a pinned
registry package (see ``ModelSpec.calibration``), letterboxed like at inference, so the
result is the same on every machine with the same onnxruntime.
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from veil.errors import ModelError
from veil.models.convert.yolo_pt import convert as convert_fp32

#: input sizes (long side) the calibration photos are letterboxed to
CALIBRATION_SIZES = (1.0, 0.75)


@contextmanager
def _quiet_logging() -> Iterator[None]:
    """The quantizer logs advice (pre-processing, links) as warnings on the root logger:
    not for a user watching a first-use fetch."""
    before = logging.root.manager.disable
    logging.disable(max(before, logging.WARNING))
    try:
        yield
    finally:
        logging.disable(before)


def yolo_int8(src: Path, dst: Path, photos: list[Path], size: int) -> dict:
    """Convert the Ultralytics checkpoint ``src`` to an int8 ONNX model at ``dst``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from veil.models.preprocess import letterbox, planar_blob
    from veil.imageio import load_image

    if not photos:
        raise ModelError("int8 conversion needs calibration photos")
    blobs = []
    for p in photos:
        rgb = load_image(p).rgb
        for f in CALIBRATION_SIZES:
            img, _, _ = letterbox(rgb, int(size * f) // 32 * 32)
            blobs.append({"images": planar_blob(img, 255.0)})

    class Photos(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(blobs)

        def get_next(self) -> dict | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory(prefix="veil-int8-") as tmp, _quiet_logging():
        fp32 = Path(tmp) / "fp32.onnx"
        info = convert_fp32(src, fp32)
        quantize_static(
            str(fp32),
            str(dst),
            Photos(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return {**info, "int8": True, "calibration": [p.name for p in photos]}
