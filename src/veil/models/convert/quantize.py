"""int8 YOLO models: veil's own ONNX conversion, then onnxruntime's static quantizer.

A medium-sized detector (YOLO11m faces; the plate model's YOLOv8n and the pose model too)
is the cost of a whole photo's detection on a CPU. In int8 the face model runs 69 ms on a 640 x 384 input
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


def _photo_blobs(photos: list[Path], blob) -> list:
    if not photos:
        raise ModelError("int8 conversion needs calibration photos")
    from veil.imageio import load_image

    return [blob(load_image(p).rgb, f) for p in photos for f in CALIBRATION_SIZES]


def _quantize(fp32: Path, dst: Path, blobs: list, ops: tuple[str, ...], exclude: list[str]) -> None:
    """onnxruntime's static quantizer (QDQ, weights per channel, activations per tensor),
    calibrated on ``blobs`` (input feeds)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Photos(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(blobs)

        def get_next(self) -> dict | None:
            return next(self._it, None)

    with _quiet_logging():
        quantize_static(
            str(fp32),
            str(dst),
            Photos(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(ops),
            nodes_to_exclude=exclude,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )


def yolo_int8(src: Path, dst: Path, photos: list[Path], size: int) -> dict:
    """Convert the Ultralytics checkpoint ``src`` to an int8 ONNX model at ``dst``."""
    import onnx

    from veil.models.convert.yolo_pt import convert as convert_fp32
    from veil.models.preprocess import letterbox, planar_blob

    blobs = _photo_blobs(photos, lambda rgb, f: {"images": planar_blob(letterbox(rgb, int(size * f) // 32 * 32)[0], 255.0)})
    with tempfile.TemporaryDirectory(prefix="veil-int8-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        info = convert_fp32(src, fp32)
        _quantize(fp32, dst, blobs, QUANTIZED_OPS, float_nodes(onnx.load(str(fp32))))
    return {**info, "int8": True, "recipe": RECIPE, "calibration": [p.name for p in photos]}


#: NanoDet (TFJS): op types quantized; its outputs leave through Sigmoid (scores) and
#: Reshape/Transpose (box distributions), which stay in float
NANODET_QUANTIZED_OPS = ("Conv", "LeakyRelu", "Concat", "Add", "Resize", "MaxPool", "Split")


def fold_pads(model) -> int:
    """Fold constant ``Pad`` nodes into the ops they feed where those pad with the same
    value themselves: zeros into convolutions, -inf into max pooling; returns how many.

    TFJS graphs carry padding as a ``Pad`` op before the convolution or pooling. onnxruntime
    fuses that into float ops, but in a quantized graph the ``Pad`` sits between an
    activation's quantize/dequantize pair and its op, so the int8 op would not form (and a
    -inf padding has no uint8 range): folded, the same values are the op's own ``pads``."""
    from onnx import helper, numpy_helper

    init = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}
    folded = []
    for n in model.graph.node:
        if n.op_type != "Pad" or len(n.input) < 2 or n.input[1] not in init or n.output[0] in outputs:
            continue
        if len(n.input) > 3 and n.input[3]:
            continue  # opset 18's axes: pads in another order
        modes = [helper.get_attribute_value(a) for a in n.attribute if a.name == "mode"]
        if modes and modes[0] not in (b"constant", "constant"):
            continue
        value = 0.0
        if len(n.input) > 2 and n.input[2]:
            if n.input[2] not in init:
                continue
            value = float(numpy_helper.to_array(init[n.input[2]]).reshape(-1)[0])
        into = {0.0: "Conv", float("-inf"): "MaxPool"}.get(value)
        pads = numpy_helper.to_array(init[n.input[1]]).tolist()
        users = consumers.get(n.output[0], [])
        if into is None or len(pads) != 8 or any(pads[k] for k in (0, 1, 4, 5)) or min(pads) < 0 or not users:
            continue  # only growing the spatial sides of an NCHW tensor
        attrs = [{a.name: a for a in u.attribute} for u in users]
        if not all(_folds_into(u, a, into, n.output[0], pads) for u, a in zip(users, attrs)):
            continue
        for u, a in zip(users, attrs):
            cp = list(helper.get_attribute_value(a["pads"])) if "pads" in a else [0, 0, 0, 0]
            if "pads" in a:
                u.attribute.remove(a["pads"])
            u.attribute.append(helper.make_attribute("pads", [cp[0] + pads[2], cp[1] + pads[3], cp[2] + pads[6], cp[3] + pads[7]]))
            u.input[0] = n.input[0]
        folded.append(n)
    for n in folded:
        model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input} | outputs | {i.name for i in model.graph.input}
    gone = {i for n in folded for i in n.input[1:] if i} - used
    for i in [i for i in model.graph.initializer if i.name in gone]:
        model.graph.initializer.remove(i)  # the folded pads' amounts and values
    return len(folded)


def _folds_into(node, attrs: dict, op: str, tensor: str, pads: list[int]) -> bool:
    """Whether a pad of ``tensor`` by ``pads`` can become ``node``'s own padding: the op
    pads with that value, takes ``tensor`` as its data input, has explicit pads, and (max
    pooling) keeps each side's padding under its kernel, as onnxruntime requires."""
    from onnx import helper

    if node.op_type != op or node.input[0] != tensor or tensor in node.input[1:]:
        return False
    if "auto_pad" in attrs and helper.get_attribute_value(attrs["auto_pad"]) not in (b"NOTSET", "NOTSET"):
        return False
    if op == "MaxPool":
        kernel = list(helper.get_attribute_value(attrs["kernel_shape"])) if "kernel_shape" in attrs else [1, 1]
        own = list(helper.get_attribute_value(attrs["pads"])) if "pads" in attrs else [0, 0, 0, 0]
        total = [own[0] + pads[2], own[1] + pads[3], own[2] + pads[6], own[3] + pads[7]]
        if any(t >= kernel[k % 2] for k, t in enumerate(total)):
            return False
    return True


def nanodet_int8(src: Path, dst: Path, photos: list[Path], size: int) -> dict:
    """Convert the TFJS NanoDet graph ``src`` (model.json beside its weights) to an int8
    ONNX model at ``dst``: converted, its paddings folded, quantized."""
    import onnx

    from veil.models.convert.tfjs import convert as convert_fp32
    from veil.models.preprocess import preprocess_nanodet

    with tempfile.TemporaryDirectory(prefix="veil-int8-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        info = convert_fp32(src, fp32)
        model = onnx.load(str(fp32))
        folded = fold_pads(model)
        onnx.save(model, str(fp32))
        name = model.graph.input[0].name
        blobs = _photo_blobs(photos, lambda rgb, f: {name: preprocess_nanodet(rgb, int(size * f) // 32 * 32, square=False)[0]})
        _quantize(fp32, dst, blobs, NANODET_QUANTIZED_OPS, [])
    return {**info, "int8": True, "recipe": RECIPE, "pads_folded": folded, "calibration": [p.name for p in photos]}
