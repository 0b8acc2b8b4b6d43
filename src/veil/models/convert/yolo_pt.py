"""Convert Ultralytics YOLO ``.pt`` checkpoints (detect / pose) to ONNX without torch.

Why: veil ships no torch and no TensorFlow, yet useful detectors (licence plates, people)
are published only as Ultralytics checkpoints. A checkpoint is a pickle of the whole
``nn.Module`` tree; :mod:`veil.models.convert.torch_pickle` reads it as inert stand-ins
(no foreign code runs), and this module rebuilds the same forward pass as an ONNX graph:

* the layer list ``model.model`` is walked in order, each layer taking the outputs named by
  its ``f`` (from-index); channel counts, kernel sizes, strides, groups, paddings, BN eps,
  attention heads... are all read from the checkpoint, only the wiring of each layer type
  is written here (Conv, DWConv, C2f, C3, C3k, C3k2, Bottleneck, SPPF, C2PSA / PSABlock /
  Attention, Upsample, Concat, Detect, Pose);
* Conv + BatchNorm are folded into one Conv with bias, weights widened to float32;
* the head decodes like ``ultralytics`` export: DFL (softmax over ``reg_max`` bins, expected
  value), boxes ``cx, cy, w, h`` in input pixels, sigmoid class scores and, for pose,
  keypoints ``((k * 2 + anchor - 0.5) * stride, sigmoid(visibility))``; anchors and
  strides are built *inside* the graph from the feature-map shapes, so one file serves
  any input size (multiples of 32).

Graph I/O: input ``images`` float32 ``[1, 3, H, W]`` (RGB, 0..1, H and W dynamic);
output ``output0`` float32 ``[1, 4 + nc (+ nkpt * ndim), N]``, N = sum of H*W / stride^2.

Conversion takes well under a second for nano models (a few MB of weights, no tracing).
Unknown layer types raise :class:`veil.errors.ModelError` rather than guessing.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from veil.errors import ModelError
from veil.models.convert.torch_pickle import (
    buffers,
    children,
    class_name,
    load_checkpoint,
    params,
)

__all__ = ["build_model", "convert"]

OPSET = 17


class _Graph:
    """Tiny ONNX graph builder: unique names, constants as initializers."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0
        self._consts: dict[tuple, str] = {}

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value: Any, hint: str = "c", dtype: Any = np.float32) -> str:
        arr = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        small = arr.size <= 16
        key = (arr.dtype.str, arr.shape, arr.tobytes()) if small else None
        if key is not None and key in self._consts:
            return self._consts[key]
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(arr, name))
        if key is not None:
            self._consts[key] = name
        return name

    def op(
        self, op_type: str, inputs: list[str], outputs: int = 1, **attrs: Any
    ) -> Any:
        outs = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(
            helper.make_node(
                op_type, inputs, outs, name=self.name("n_" + op_type), **attrs
            )
        )
        return outs[0] if outputs == 1 else outs


# --- conv / activation ----------------------------------------------------------------


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1])) if len(v) == 2 else (int(v[0]), int(v[0]))
    return int(v), int(v)


def _conv2d(g: _Graph, conv: Any, x: str, bn: Any = None) -> str:
    """nn.Conv2d (+ folded BatchNorm2d) as one ONNX Conv."""
    if class_name(conv) != "Conv2d":
        raise ModelError(f"expected Conv2d, found {class_name(conv)}")
    p = params(conv)
    w = np.asarray(p["weight"], dtype=np.float64)
    b = np.asarray(p["bias"], dtype=np.float64) if "bias" in p else np.zeros(w.shape[0])
    if getattr(conv, "padding_mode", "zeros") != "zeros":
        raise ModelError(f"Conv2d padding_mode {conv.padding_mode!r} is not supported")
    k = w.shape[2:]
    d = _pair(getattr(conv, "dilation", 1))
    pad = getattr(conv, "padding", 0)
    if pad == "valid":
        pad = (0, 0)
    elif pad == "same":
        pad = tuple(d[i] * (k[i] - 1) // 2 for i in range(2))
    ph, pw = _pair(pad)
    if bn is not None:
        bp, bb = params(bn), buffers(bn)
        mean = np.asarray(bb["running_mean"], dtype=np.float64)
        var = np.asarray(bb["running_var"], dtype=np.float64)
        gamma = (
            np.asarray(bp["weight"], dtype=np.float64)
            if "weight" in bp
            else np.ones_like(mean)
        )
        beta = (
            np.asarray(bp["bias"], dtype=np.float64)
            if "bias" in bp
            else np.zeros_like(mean)
        )
        scale = gamma / np.sqrt(var + float(getattr(bn, "eps", 1e-5)))
        w = w * scale[:, None, None, None]
        b = (b - mean) * scale + beta
    return g.op(
        "Conv",
        [x, g.const(w, "w"), g.const(b, "b")],
        kernel_shape=[int(k[0]), int(k[1])],
        strides=list(_pair(getattr(conv, "stride", 1))),
        pads=[ph, pw, ph, pw],
        dilations=list(d),
        group=int(getattr(conv, "groups", 1)),
    )


def _act(g: _Graph, act: Any, x: str) -> str:
    name = class_name(act) if act is not None else "Identity"
    if name == "SiLU":
        return g.op("Mul", [x, g.op("Sigmoid", [x])])
    if name == "Identity":
        return x
    if name == "ReLU":
        return g.op("Relu", [x])
    if name == "Sigmoid":
        return g.op("Sigmoid", [x])
    if name == "LeakyReLU":
        return g.op("LeakyRelu", [x], alpha=float(getattr(act, "negative_slope", 0.01)))
    raise ModelError(f"unsupported activation {name}")


def _conv_block(g: _Graph, m: Any, x: str) -> str:
    """ultralytics Conv / DWConv: conv -> bn -> act (bn absent if already fused)."""
    c = children(m)
    return _act(g, c.get("act"), _conv2d(g, c["conv"], x, c.get("bn")))


# --- blocks ---------------------------------------------------------------------------


def _split(g: _Graph, x: str, sizes: list[int]) -> list[str]:
    outs = g.op(
        "Split", [x, g.const(sizes, "split", np.int64)], outputs=len(sizes), axis=1
    )
    return list(outs) if isinstance(outs, list) else [outs]


def _out_channels(m: Any) -> int:
    return int(params(children(m)["conv"])["weight"].shape[0])


def _bottleneck(g: _Graph, m: Any, x: str) -> str:
    c = children(m)
    y = _conv_block(g, c["cv2"], _conv_block(g, c["cv1"], x))
    return g.op("Add", [x, y]) if getattr(m, "add", False) else y


def _c2f(
    g: _Graph, m: Any, x: str
) -> str:  # also C3k2 (a C2f whose m holds C3k/Bottleneck)
    c = children(m)
    half = _out_channels(c["cv1"]) // 2
    ys = _split(g, _conv_block(g, c["cv1"], x), [half, half])
    for sub in children(c["m"]).values():
        ys.append(_module(g, sub, ys[-1]))
    return _conv_block(g, c["cv2"], g.op("Concat", ys, axis=1))


def _c3(g: _Graph, m: Any, x: str) -> str:  # C3 and C3k
    c = children(m)
    a = _module(g, c["m"], _conv_block(g, c["cv1"], x))
    return _conv_block(
        g, c["cv3"], g.op("Concat", [a, _conv_block(g, c["cv2"], x)], axis=1)
    )


def _sppf(g: _Graph, m: Any, x: str) -> str:
    c = children(m)
    pool = c["m"]
    k = _pair(getattr(pool, "kernel_size", 5))
    s = _pair(getattr(pool, "stride", None) or k)
    p = _pair(getattr(pool, "padding", 0))
    if getattr(pool, "ceil_mode", False) or _pair(getattr(pool, "dilation", 1)) != (
        1,
        1,
    ):
        raise ModelError("SPPF MaxPool2d with ceil_mode/dilation is not supported")
    ys = [_conv_block(g, c["cv1"], x)]
    for _ in range(int(getattr(m, "n", 3))):
        ys.append(
            g.op(
                "MaxPool",
                [ys[-1]],
                kernel_shape=list(k),
                strides=list(s),
                pads=[p[0], p[1], p[0], p[1]],
            )
        )
    y = _conv_block(g, c["cv2"], g.op("Concat", ys, axis=1))
    return g.op("Add", [y, x]) if getattr(m, "add", False) else y


def _attention(g: _Graph, m: Any, x: str) -> str:
    c = children(m)
    nh, kd, hd = int(m.num_heads), int(m.key_dim), int(m.head_dim)
    scale = float(getattr(m, "scale", kd**-0.5))
    shape = g.op("Shape", [x])  # B, C, H, W
    qkv = _conv_block(g, c["qkv"], x)
    qkv = g.op("Reshape", [qkv, g.const([0, nh, 2 * kd + hd, -1], "shape", np.int64)])
    q, k, v = g.op(
        "Split", [qkv, g.const([kd, kd, hd], "split", np.int64)], outputs=3, axis=2
    )
    qt = g.op(
        "Transpose", [g.op("Mul", [q, g.const(scale, "scale")])], perm=[0, 1, 3, 2]
    )
    attn = g.op("Softmax", [g.op("MatMul", [qt, k])], axis=-1)  # B, nh, N, N
    out = g.op(
        "MatMul", [v, g.op("Transpose", [attn], perm=[0, 1, 3, 2])]
    )  # B, nh, hd, N
    out = g.op("Reshape", [out, shape])
    pe = _conv_block(g, c["pe"], g.op("Reshape", [v, shape]))
    return _conv_block(g, c["proj"], g.op("Add", [out, pe]))


def _psa_block(g: _Graph, m: Any, x: str) -> str:
    c = children(m)
    add = getattr(m, "add", True)
    a = _attention(g, c["attn"], x)
    x = g.op("Add", [x, a]) if add else a
    f = _module(g, c["ffn"], x)
    return g.op("Add", [x, f]) if add else f


def _c2psa(g: _Graph, m: Any, x: str) -> str:
    c = children(m)
    half = _out_channels(c["cv1"]) // 2
    a, b = _split(g, _conv_block(g, c["cv1"], x), [half, half])
    b = _module(g, c["m"], b)
    return _conv_block(g, c["cv2"], g.op("Concat", [a, b], axis=1))


def _upsample(g: _Graph, m: Any, x: str) -> str:
    if (
        getattr(m, "mode", "nearest") != "nearest"
        or getattr(m, "size", None) is not None
    ):
        raise ModelError("only nearest Upsample with a scale factor is supported")
    sh, sw = (float(v) for v in _pair_f(m.scale_factor))
    return g.op(
        "Resize",
        [x, "", g.const([1.0, 1.0, sh, sw], "scales")],
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )


def _pair_f(v: Any) -> tuple[float, float]:
    if isinstance(v, (tuple, list)):
        return float(v[0]), float(v[-1])
    return float(v), float(v)


def _sequential(g: _Graph, m: Any, x: str) -> str:
    for sub in children(m).values():
        x = _module(g, sub, x)
    return x


_BLOCKS = {
    "Conv": _conv_block,
    "DWConv": _conv_block,
    "Conv2d": lambda g, m, x: _conv2d(g, m, x),
    "Sequential": _sequential,
    "ModuleList": _sequential,
    "Bottleneck": _bottleneck,
    "C2f": _c2f,
    "C3k2": _c2f,
    "C3": _c3,
    "C3k": _c3,
    "SPPF": _sppf,
    "C2PSA": _c2psa,
    "PSABlock": _psa_block,
    "Attention": _attention,
    "Upsample": _upsample,
    "Identity": lambda g, m, x: x,
    "SiLU": _act,
}


def _module(g: _Graph, m: Any, x: str) -> str:
    fn = _BLOCKS.get(class_name(m))
    if fn is None:
        raise ModelError(f"unsupported layer type {class_name(m)} in YOLO checkpoint")
    return fn(g, m, x)


# --- head -----------------------------------------------------------------------------


def _anchors(g: _Graph, feats: list[str], strides: list[float]) -> tuple[str, str]:
    """Anchor centres [2, N] (grid units, +0.5) and strides [1, N] from the maps' shapes."""
    idx2, idx3 = g.const(2, "i", np.int64), g.const(3, "i", np.int64)
    ax0, ax1 = g.const([0], "axes", np.int64), g.const([1], "axes", np.int64)
    flat = g.const([1, -1], "shape", np.int64)
    half, one, zero = g.const(0.5, "half"), g.const(1.0, "one"), g.const(0.0, "zero")
    anchors, strides_out = [], []
    for feat, stride in zip(feats, strides):
        shape = g.op("Shape", [feat])
        h = g.op("Cast", [g.op("Gather", [shape, idx2], axis=0)], to=TensorProto.FLOAT)
        w = g.op("Cast", [g.op("Gather", [shape, idx3], axis=0)], to=TensorProto.FLOAT)
        sy = g.op("Range", [half, g.op("Add", [h, half]), one])  # [h]
        sx = g.op("Range", [half, g.op("Add", [w, half]), one])  # [w]
        zx = g.op("Unsqueeze", [g.op("Mul", [sx, zero]), ax0])  # [1, w] zeros
        zy = g.op("Unsqueeze", [g.op("Mul", [sy, zero]), ax1])  # [h, 1] zeros
        gx = g.op(
            "Reshape", [g.op("Add", [g.op("Unsqueeze", [sx, ax0]), zy]), flat]
        )  # [1, h*w]
        gy = g.op("Reshape", [g.op("Add", [g.op("Unsqueeze", [sy, ax1]), zx]), flat])
        anchors.append(g.op("Concat", [gx, gy], axis=0))
        strides_out.append(
            g.op("Add", [g.op("Mul", [gx, zero]), g.const(float(stride), "stride")])
        )
    return g.op("Concat", anchors, axis=1), g.op("Concat", strides_out, axis=1)


def _branch(g: _Graph, heads: Any, feats: list[str], channels: int) -> str:
    outs = []
    shape = g.const([0, channels, -1], "shape", np.int64)
    for head, x in zip(children(heads).values(), feats):
        outs.append(g.op("Reshape", [_module(g, head, x), shape]))
    return g.op("Concat", outs, axis=2)


def _head(
    g: _Graph, det: Any, feats: list[str], strides: list[float]
) -> tuple[str, str]:
    kind = class_name(det)
    c = children(det)
    nc, reg_max = int(det.nc), int(getattr(det, "reg_max", 16))
    if (
        len(feats) != int(getattr(det, "nl", len(feats)))
        or "cv2" not in c
        or "cv3" not in c
    ):
        raise ModelError(
            f"{kind} head without one-to-many cv2/cv3 branches is not supported"
        )
    anchors, stride_t = _anchors(g, feats, strides)

    box = _branch(g, c["cv2"], feats, 4 * reg_max)  # B, 4*reg_max, N
    if reg_max > 1:
        dfl_w = None
        dfl = c.get("dfl")
        if dfl is not None and "conv" in children(dfl):
            dfl_w = params(children(dfl)["conv"]).get("weight")
        bins = (
            np.arange(reg_max, dtype=np.float32)
            if dfl_w is None
            else np.asarray(dfl_w, np.float32).reshape(-1)
        )
        prob = g.op(
            "Softmax",
            [g.op("Reshape", [box, g.const([0, 4, reg_max, -1], "shape", np.int64)])],
            axis=2,
        )
        dist = g.op("Mul", [prob, g.const(bins.reshape(1, 1, reg_max, 1), "dfl")])
        dist = g.op(
            "ReduceSum", [dist, g.const([2], "axes", np.int64)], keepdims=0
        )  # B, 4, N
    else:
        dist = box
    lt, rb = _split(g, dist, [2, 2])
    x1y1 = g.op("Sub", [anchors, lt])
    x2y2 = g.op("Add", [anchors, rb])
    cxy = g.op("Mul", [g.op("Add", [x1y1, x2y2]), g.const(0.5, "half")])
    wh = g.op("Sub", [x2y2, x1y1])
    dbox = g.op("Mul", [g.op("Concat", [cxy, wh], axis=1), stride_t])
    scores = g.op("Sigmoid", [_branch(g, c["cv3"], feats, nc)])
    parts = [dbox, scores]

    if kind == "Pose":
        nkpt, ndim = (int(v) for v in det.kpt_shape)
        nk = nkpt * ndim
        kpt = _branch(g, c["cv4"], feats, nk)
        kpt = g.op("Reshape", [kpt, g.const([0, nkpt, ndim, -1], "shape", np.int64)])
        two = g.const([2], "i", np.int64)
        ax2 = g.const([2], "axes", np.int64)
        xy = g.op("Slice", [kpt, g.const([0], "i", np.int64), two, ax2])
        grid = g.op("Sub", [anchors, g.const(0.5, "half")])
        xy = g.op(
            "Mul",
            [g.op("Add", [g.op("Mul", [xy, g.const(2.0, "two")]), grid]), stride_t],
        )
        if ndim == 3:
            vis = g.op(
                "Sigmoid", [g.op("Slice", [kpt, two, g.const([3], "i", np.int64), ax2])]
            )
            xy = g.op("Concat", [xy, vis], axis=2)
        parts.append(g.op("Reshape", [xy, g.const([0, nk, -1], "shape", np.int64)]))
    elif kind != "Detect":
        raise ModelError(f"unsupported YOLO head {kind} (only Detect and Pose)")
    return g.op("Concat", parts, axis=1), kind


# --- public ---------------------------------------------------------------------------


def _layers(model: Any) -> list[Any]:
    seq = children(model).get("model")
    if seq is None:
        raise ModelError("checkpoint model has no layer list (model.model)")
    return list(children(seq).values())


def build_model(ckpt: dict) -> tuple[onnx.ModelProto, dict]:
    """Build the ONNX model and its metadata from an unpickled Ultralytics checkpoint."""
    if not isinstance(ckpt, dict) or (
        ckpt.get("ema") is None and ckpt.get("model") is None
    ):
        raise ModelError("not an Ultralytics checkpoint (no 'model' / 'ema' entry)")
    model = ckpt.get("ema") or ckpt["model"]
    layers = _layers(model)
    head = layers[-1]
    kind = class_name(head)
    if kind not in ("Detect", "Pose"):
        raise ModelError(f"unsupported YOLO head {kind} (only Detect and Pose)")
    strides = [
        float(s)
        for s in np.asarray(
            getattr(head, "stride", getattr(model, "stride", None))
        ).reshape(-1)
    ]
    if not strides or min(strides) <= 0:
        raise ModelError("checkpoint has no valid strides")

    g = _Graph()
    outs: list[str] = []
    x = "images"
    for layer in layers:
        f = getattr(layer, "f", -1)
        inputs = (
            [x if j == -1 else outs[j] for j in f]
            if isinstance(f, (list, tuple))
            else [x if f == -1 else outs[f]]
        )
        name = class_name(layer)
        if layer is head:
            x, _ = _head(g, layer, inputs, strides)
        elif name == "Concat":
            x = g.op("Concat", inputs, axis=int(getattr(layer, "d", 1)))
        else:
            if len(inputs) != 1:
                raise ModelError(f"layer {name} with several inputs is not supported")
            x = _module(g, layer, inputs[0])
        outs.append(x)

    nc = int(head.nc)
    kpt_shape = [int(v) for v in head.kpt_shape] if kind == "Pose" else None
    n_out = 4 + nc + (kpt_shape[0] * kpt_shape[1] if kpt_shape else 0)
    g.nodes.append(helper.make_node("Identity", [x], ["output0"], name="output"))
    names = getattr(model, "names", None) or {i: str(i) for i in range(nc)}
    names = (
        {int(k): str(v) for k, v in dict(names).items()}
        if isinstance(names, dict)
        else dict(enumerate(names))
    )
    meta = {
        "task": "pose" if kind == "Pose" else "detect",
        "nc": nc,
        "kpt_shape": kpt_shape,
        "stride": int(max(strides)),
        "names": names,
        "source_version": str(ckpt.get("version", "")),
    }
    graph = helper.make_graph(
        g.nodes,
        "yolo",
        [
            helper.make_tensor_value_info(
                "images", TensorProto.FLOAT, [1, 3, "height", "width"]
            )
        ],
        [
            helper.make_tensor_value_info(
                "output0", TensorProto.FLOAT, [1, n_out, "anchors"]
            )
        ],
        initializer=g.inits,
    )
    onx = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="veil.models.convert.yolo_pt",
    )
    onx.ir_version = 8
    for k, v in meta.items():
        entry = onx.metadata_props.add()
        entry.key, entry.value = k, json.dumps(v)
    onnx.checker.check_model(onx)
    return onx, meta


def convert(src: Path, dst: Path) -> dict:
    """Convert the Ultralytics checkpoint ``src`` to the ONNX file ``dst``; return its metadata.

    Metadata: ``task`` ("detect" | "pose"), ``nc``, ``kpt_shape`` ([17, 3] or None),
    ``stride`` (largest stride, 32: inputs must be multiples of it), ``names`` ({id: name}),
    ``source_version`` (ultralytics version that saved the file).
    """
    src, dst = Path(src), Path(dst)
    try:
        ckpt = load_checkpoint(src)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read checkpoint {src}: {exc}") from exc
    except Exception as exc:  # corrupt pickle, truncated storage...
        raise ModelError(
            f"cannot read checkpoint {src}: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        onx, meta = build_model(ckpt)
    except ModelError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelError(
            f"{src}: unexpected YOLO checkpoint layout ({type(exc).__name__}: {exc})"
        ) from exc
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dst.name + ".", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        onnx.save(onx, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return meta
