"""int8 YOLO models: veil's own ONNX conversion, then onnxruntime's static quantizer.

A medium-sized detector (YOLO11m faces; the plate model's YOLOv8n too) is the cost of a
whole photo's detection on a CPU. In int8 the face model runs 69 ms on a 640 x 384 input
against 154 ms in float (convolutions alone in int8: 111 ms), with the same recall on the
face set: the convolutions (weights per channel) and the ops between them (SiLU's Sigmoid
and Mul, the residual Adds, Concat, MaxPool, Resize, Split, Slice: activations per tensor)
run quantized, while the detection head's decoding stays in float (``float_nodes``): its
box coordinates and class scores share one output tensor, and one uint8 range for both
would round every score to 0. Activation ranges come from photos of a pinned registry
package (see ``ModelSpec.calibration``), letterboxed like at inference, so the result is
the same on every machine with the same onnxruntime.
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from veil.errors import ModelError

#: input sizes (long side) the calibration photos are letterboxed to
CALIBRATION_SIZES = (1.0, 0.75)
#: the quantization recipe, recorded with each int8 model: a cached model built by another
#: recipe is rebuilt (1: convolutions only; 2: convolutions and the ops between them)
RECIPE = 2
#: op types quantized; the others (Reshape, Softmax, Transpose ...) run in float
QUANTIZED_OPS = ("Conv", "Mul", "Sigmoid", "Add", "Concat", "MaxPool", "Resize", "Split", "Slice")


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


def float_nodes(model) -> list[str]:
    """Nodes of an ONNX YOLO graph that must stay in float: those computed from shapes
    rather than from the image (the anchor grid) and the detection head's decoding, i.e.
    every node from a Reshape after which no convolution follows (the attention block's
    Reshapes lead to more convolutions and stay quantized)."""
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def below(tensors, stop=lambda n: False) -> set[str]:
        seen: set[str] = set()
        todo = list(tensors)
        while todo:
            for n in consumers.get(todo.pop(), []):
                if n.name not in seen and not stop(n):
                    seen.add(n.name)
                    todo += list(n.output)
        return seen

    names = [n.name for n in model.graph.node]
    if "" in names or len(set(names)) != len(names):
        # the quantizer excludes nodes by name: unnamed or shared names would exclude all or none
        raise ModelError("int8 conversion needs a graph whose nodes have unique names")
    inputs = [i.name for i in model.graph.input]
    from_image = below(inputs, stop=lambda n: n.op_type == "Shape")
    ops = {n.name: n.op_type for n in model.graph.node}
    head: set[str] = set()
    for n in model.graph.node:
        if n.op_type == "Reshape" and n.name in from_image and n.name not in head:
            after = below(n.output)
            if not any(ops[m] == "Conv" for m in after):
                head |= after | {n.name}
    keep = [n.name for n in model.graph.node if n.name not in from_image or n.name in head]
    producer = {o: n.name for n in model.graph.node for o in n.output}
    if any(producer.get(o.name) not in keep for o in model.graph.output):
        # a head this rule does not recognise: quantizing its decoding would zero every score
        raise ModelError("int8 conversion found no float decoding head in this graph")
    return keep


def yolo_int8(src: Path, dst: Path, photos: list[Path], size: int) -> dict:
    """Convert the Ultralytics checkpoint ``src`` to an int8 ONNX model at ``dst``."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from veil.imageio import load_image
    from veil.models.convert.yolo_pt import convert as convert_fp32
    from veil.models.preprocess import letterbox, planar_blob

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
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=float_nodes(onnx.load(str(fp32))),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return {**info, "int8": True, "recipe": RECIPE, "calibration": [p.name for p in photos]}
