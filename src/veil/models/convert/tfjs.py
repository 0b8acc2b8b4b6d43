"""Convert TensorFlow.js graph models (``model.json`` + ``.bin`` shards) to ONNX, without TensorFlow.

A TFJS *graph model* is a TF GraphDef written as JSON (``modelTopology.node``: name, op,
input, attr) plus a ``weightsManifest`` that says how to slice the binary shards into the
values of the ``Const`` nodes (optionally quantized: ``uint8``/``uint16`` with scale and
min, or ``float16``). This module reads both and rebuilds the graph with :mod:`onnx`
helpers:

* weights are dequantized to float32 (int64 constants, stored by TFJS as int32, are widened
  back to what the node declares);
* everything computable from constants alone (``SparseToDense`` shape tricks, ``Pack`` of
  constants, ...) is folded here with numpy;
* layout: TF convolutions, pools and resizes are NHWC, ONNX's are NCHW. Each tensor carries
  a permutation (``onnx_value == np.transpose(tf_value, perm)``), so TF ``Transpose`` ops
  cost nothing, element-wise ops, pads, concats and splits follow whatever layout their
  input has, and a real ``Transpose`` node is written only where an op needs the TF layout
  (``Reshape``, ``Shape`` is handled without one). Models exported through onnx-tf (NCHW
  tensors with a transpose pair around every conv, like NanoDet) come out with none;
* ``SAME`` padding becomes explicit pads where they do not depend on the input size (stride
  1, or a fixed input), otherwise ``auto_pad=SAME_UPPER`` which is TF's rule; explicit TF
  ``Pad``/``PadV2``/``MirrorPad`` ops stay ONNX ``Pad`` (ORT fuses them into the conv);
  a conv followed by a constant bias ``Add``/``BiasAdd`` gets the bias fused;
* ``ResizeBilinear``/``ResizeNearestNeighbor``: ``align_corners`` -> ``align_corners``,
  ``half_pixel_centers`` -> ``half_pixel`` (nearest: ``round_prefer_ceil``, which is TF's
  ``floor((i + 0.5) * scale)``), neither -> ``asymmetric`` (nearest: ``floor``).

Dynamic input size: for a 4-D image input the converter builds a second graph whose input
height and width are symbolic (constant resize sizes become scale factors, ``Shape`` is not
folded) and keeps it only if onnxruntime gives the same outputs as the fixed graph at the
declared size and still runs at another size; otherwise the declared size stays fixed.
The returned metadata says which (``dynamic_hw``).

Unsupported ops raise :class:`ConversionError` naming them, rather than guessing.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from veil.errors import ModelError

log = logging.getLogger(__name__)

OPSET = 17

__all__ = ["ConversionError", "convert", "convert_to_model", "load_tfjs"]


class ConversionError(ModelError):
    """The TFJS model cannot be converted (unsupported op, malformed file...)."""


# ---------------------------------------------------------------------------------------
# reading model.json and the weight shards
# ---------------------------------------------------------------------------------------

_TF_DTYPES: dict[str, np.dtype] = {
    "DT_FLOAT": np.dtype(np.float32),
    "DT_DOUBLE": np.dtype(np.float64),
    "DT_HALF": np.dtype(np.float16),
    "DT_INT32": np.dtype(np.int32),
    "DT_INT64": np.dtype(np.int64),
    "DT_INT16": np.dtype(np.int16),
    "DT_INT8": np.dtype(np.int8),
    "DT_UINT8": np.dtype(np.uint8),
    "DT_UINT16": np.dtype(np.uint16),
    "DT_BOOL": np.dtype(np.bool_),
    "DT_STRING": np.dtype(object),
}

_JS_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "int32": np.dtype(np.int32),
    "bool": np.dtype(np.bool_),
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16),
    "float16": np.dtype(np.float16),
    "int8": np.dtype(np.int8),
    "int16": np.dtype(np.int16),
}


def _read_weights(manifest: list[dict], base: Path) -> dict[str, np.ndarray]:
    """Slice the shards into named arrays, dequantizing as the manifest says."""
    out: dict[str, np.ndarray] = {}
    for group in manifest:
        buf = b"".join((base / p).read_bytes() for p in group["paths"])
        off = 0
        for spec in group["weights"]:
            shape = [int(d) for d in spec.get("shape", [])]
            n = int(np.prod(shape)) if shape else 1
            dtype = spec.get("dtype", "float32")
            quant = spec.get("quantization")
            if dtype == "string":
                items = []
                for _ in range(n):
                    (ln,) = np.frombuffer(buf, "<u4", 1, off)
                    off += 4
                    items.append(buf[off : off + int(ln)])
                    off += int(ln)
                out[spec["name"]] = np.array(items, dtype=object).reshape(shape)
                continue
            if quant:
                qdt = _JS_DTYPES.get(quant["dtype"])
                if qdt is None:
                    raise ConversionError(f"weight {spec['name']!r}: unknown quantization {quant['dtype']!r}")
                raw = np.frombuffer(buf, qdt.newbyteorder("<"), n, off)
                off += n * qdt.itemsize
                if qdt == np.float16:
                    val = raw.astype(np.float32)
                else:
                    val = raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
                target = _JS_DTYPES.get(dtype, np.dtype(np.float32))
                if target.kind in "iu":
                    val = np.round(val)
                arr = val.astype(target)
            else:
                dt = _JS_DTYPES.get(dtype)
                if dt is None:
                    raise ConversionError(f"weight {spec['name']!r}: unsupported dtype {dtype!r}")
                arr = np.frombuffer(buf, dt.newbyteorder("<") if dt.itemsize > 1 else dt, n, off).astype(dt)
                off += n * dt.itemsize
            out[spec["name"]] = arr.reshape(shape)
        if off != len(buf):
            raise ConversionError(f"weight shards {group['paths']} hold {len(buf)} bytes, manifest describes {off}")
    return out


def load_tfjs(model_json: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse ``model.json`` and read its weights: ``(model_dict, {const_name: array})``."""
    model_json = Path(model_json)
    try:
        model = json.loads(model_json.read_text())
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{model_json}: not a readable TFJS model.json ({exc})") from None
    if model.get("format") not in (None, "graph-model") or "modelTopology" not in model:
        raise ConversionError(f"{model_json}: not a TFJS graph model (format {model.get('format')!r})")
    if model["modelTopology"].get("library", {}).get("function"):
        raise ConversionError(f"{model_json}: graph functions (control flow) are not supported")
    weights = _read_weights(model.get("weightsManifest", []), model_json.parent)
    return model, weights


# ---------------------------------------------------------------------------------------
# node attributes
# ---------------------------------------------------------------------------------------


def _decode_s(v: str) -> str:
    return base64.b64decode(v).decode("utf-8", "replace")


def _tensor_attr(t: dict) -> np.ndarray:
    dt = _TF_DTYPES.get(t.get("dtype", "DT_FLOAT"), np.dtype(np.float32))
    dims = [int(d.get("size", 0)) for d in t.get("tensorShape", {}).get("dim", [])]
    if "tensorContent" in t:
        return np.frombuffer(base64.b64decode(t["tensorContent"]), dt).reshape(dims).copy()
    for key in ("floatVal", "doubleVal", "intVal", "int64Val", "boolVal", "halfVal"):
        if key in t:
            vals = t[key]
            if key == "halfVal":
                arr = np.array(vals, np.uint16).view(np.float16)
            else:
                arr = np.array([v if key != "int64Val" else int(v) for v in vals])
            arr = arr.astype(dt)
            return np.broadcast_to(arr, dims).copy() if arr.size == 1 else arr.reshape(dims)
    if "stringVal" in t:
        return np.array([base64.b64decode(s) for s in t["stringVal"]], dtype=object).reshape(dims)
    return np.zeros(dims, dt)  # a proto without values is all zeros


def _attr(node: dict, key: str, default: Any = None) -> Any:
    a = node.get("attr", {}).get(key)
    if a is None:
        return default
    if "s" in a:
        return _decode_s(a["s"])
    if "i" in a:
        return int(a["i"])
    if "f" in a:
        return float(a["f"])
    if "b" in a:
        return bool(a["b"])
    if "type" in a:
        return _TF_DTYPES.get(a["type"], np.dtype(np.float32))
    if "list" in a:
        lst = a["list"]
        if "s" in lst:
            return [_decode_s(s) for s in lst["s"]]
        if "i" in lst:
            return [int(i) for i in lst["i"]]
        if "f" in lst:
            return [float(f) for f in lst["f"]]
        if "type" in lst:
            return [_TF_DTYPES.get(t, np.dtype(np.float32)) for t in lst["type"]]
        return []
    if "shape" in a:
        sh = a["shape"]
        if sh.get("unknownRank"):
            return None
        return [int(d.get("size", -1)) for d in sh.get("dim", [])]
    if "tensor" in a:
        return _tensor_attr(a["tensor"])
    return default


# ---------------------------------------------------------------------------------------
# the builder
# ---------------------------------------------------------------------------------------

_ONNX_DTYPE = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float64): TensorProto.DOUBLE,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int16): TensorProto.INT16,
    np.dtype(np.int8): TensorProto.INT8,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.uint16): TensorProto.UINT16,
    np.dtype(np.bool_): TensorProto.BOOL,
}

Perm = tuple[int, ...] | None
NCHW: tuple[int, ...] = (0, 3, 1, 2)  # onnx = transpose(tf_nhwc, NCHW)


def _inv(p: Sequence[int]) -> tuple[int, ...]:
    r = [0] * len(p)
    for i, v in enumerate(p):
        r[v] = i
    return tuple(r)


def _norm_perm(p: Sequence[int] | None) -> Perm:
    if p is None:
        return None
    p = tuple(int(v) for v in p)
    return None if p == tuple(range(len(p))) else p


def _bcast(shapes: list[list[int] | None]) -> list[int] | None:
    """NumPy broadcast of static shapes (``-1`` = unknown dim, ``None`` = unknown rank)."""
    if any(s is None for s in shapes):
        return None
    r = max(len(s) for s in shapes)  # type: ignore[arg-type]
    padded = [[1] * (r - len(s)) + list(s) for s in shapes]  # type: ignore[arg-type]
    out = []
    for dims in zip(*padded):
        known = [d for d in dims if d not in (1, -1)]
        out.append(known[0] if known else (-1 if -1 in dims else 1))
    return out


class _T:
    """A TF tensor as it lives in the ONNX graph being built."""

    __slots__ = ("name", "value", "perm", "shape", "dtype", "cache")

    def __init__(self, name=None, value=None, perm=None, shape=None, dtype=None):
        self.name: str | None = name
        self.value: np.ndarray | None = value
        self.perm: Perm = _norm_perm(perm)
        if value is not None:
            shape = list(value.shape)
            dtype = value.dtype
        self.shape: list[int] | None = None if shape is None else [int(d) for d in shape]
        self.dtype: np.dtype | None = None if dtype is None else np.dtype(dtype)
        self.cache: dict = {}

    @property
    def is_const(self) -> bool:
        return self.value is not None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)


def _conv_out(n: int, k: int, s: int, d: int, pad: str, pads: tuple[int, int]) -> int:
    if n < 0:
        return -1
    keff = (k - 1) * d + 1
    if pad == "SAME":
        return -(-n // s)
    return (n + pads[0] + pads[1] - keff) // s + 1


def _same_pads(n: int, k: int, s: int, d: int) -> tuple[int, int]:
    keff = (k - 1) * d + 1
    total = max((-(-n // s) - 1) * s + keff - n, 0)
    return total // 2, total - total // 2


class _Builder:
    def __init__(self, model: dict, weights: dict[str, np.ndarray], dynamic_hw: bool):
        self.model = model
        self.weights = weights
        self.dynamic = dynamic_hw
        self.nodes_json = {n["name"]: n for n in model["modelTopology"]["node"]}
        self.nodes: list = []
        self.inits: list = []
        self.tensors: dict[str, _T] = {}
        self.used: set[str] = set()
        self.bias_open: dict[str, tuple[Any, int, str]] = {}  # conv output -> (node, C_out, TF key)
        self.graph_inputs: list = []
        self.input_info: dict | None = None
        self.consumers: dict[str, int] = {}
        for n in model["modelTopology"]["node"]:
            for ref in n.get("input", []):
                if ref.startswith("^"):
                    continue
                key = self._key(ref)
                self.consumers[key] = self.consumers.get(key, 0) + 1
        sig = model.get("signature") or model.get("userDefinedMetadata", {}).get("signature") or {}
        self.sig_inputs = sig.get("inputs", {})
        self.sig_outputs = sig.get("outputs", {})

    # -- naming ---------------------------------------------------------------------------
    @staticmethod
    def _key(ref: str) -> str:
        ref = ref.lstrip("^")
        if ":" in ref:
            name, idx = ref.rsplit(":", 1)
            if idx.isdigit():
                return f"{name}:{int(idx)}"
        return f"{ref}:0"

    def uniq(self, base: str) -> str:
        name = base
        k = 1
        while name in self.used:
            name = f"{base}_{k}"
            k += 1
        self.used.add(name)
        return name

    # -- emitting ---------------------------------------------------------------------------
    def node(self, op: str, inputs: list[str], base: str, n_out: int = 1, **attrs) -> list[str]:
        outs = [self.uniq(base if n_out == 1 else f"{base}:{i}") for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.uniq(f"{base}/{op}"), **attrs))
        return outs

    def init(self, arr: np.ndarray, base: str) -> str:
        arr = np.asarray(arr)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        name = self.uniq(base)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def i64(self, vals, base: str) -> str:
        return self.init(np.asarray(vals, np.int64), base)

    def materialize(self, t: _T, base: str = "const") -> str:
        """ONNX value name of ``t`` in TF layout."""
        return self.in_perm(t, None, base)

    def in_perm(self, t: _T, q: Perm, base: str = "const") -> str:
        """ONNX value name holding ``np.transpose(tf_value, q)``."""
        q = _norm_perm(q)
        if q in t.cache:
            return t.cache[q]
        if t.is_const:
            val = t.value if q is None else np.transpose(t.value, q)
            name = self.init(val, base + ("" if q is None else "_t"))
        elif q == t.perm:
            return t.name  # type: ignore[return-value]
        else:
            r = len(q) if q is not None else len(t.perm)  # type: ignore[arg-type]
            p = t.perm if t.perm is not None else tuple(range(r))
            qq = q if q is not None else tuple(range(r))
            ip = _inv(p)
            perm = [ip[v] for v in qq]
            name = self.node("Transpose", [t.name], f"{t.name}_T", perm=perm)[0]  # type: ignore[list-item]
        t.cache[q] = name
        return name

    # -- graph traversal -------------------------------------------------------------------
    def order(self, targets: list[str]) -> list[str]:
        seen: set[str] = set()
        out: list[str] = []
        for tgt in targets:
            stack = [(tgt, False)]
            while stack:
                name, done = stack.pop()
                if done:
                    out.append(name)
                    continue
                if name in seen:
                    continue
                seen.add(name)
                if name not in self.nodes_json:
                    raise ConversionError(f"graph references missing node {name!r}")
                stack.append((name, True))
                for ref in reversed(self.nodes_json[name].get("input", [])):
                    if ref.startswith("^"):
                        continue
                    dep = self._key(ref).rsplit(":", 1)[0]
                    if dep not in seen:
                        stack.append((dep, False))
        return out

    def build(self) -> onnx.ModelProto:
        if self.sig_outputs:
            out_refs = [v.get("name", k) for k, v in self.sig_outputs.items()]
        else:
            consumed = {k.rsplit(":", 1)[0] for k in self.consumers}
            out_refs = [n for n, v in self.nodes_json.items() if n not in consumed and v["op"] not in ("Const", "NoOp")]
        out_keys = [self._key(r) for r in out_refs]
        self.used.update(r if ":" in r else f"{r}:0" for r in out_refs)  # reserve the output names
        for name in self.order([k.rsplit(":", 1)[0] for k in out_keys]):
            nd = self.nodes_json[name]
            op = nd["op"]
            handler = getattr(self, f"op_{op}", None)
            if handler is None:
                raise ConversionError(f"unsupported TF op {op!r} (node {name!r})")
            ins = [self.tensors[self._key(r)] for r in nd.get("input", []) if not r.startswith("^")]
            try:
                res = handler(nd, ins)
            except ConversionError:
                raise
            except Exception as exc:
                raise ConversionError(f"node {name!r} ({op}): {exc}") from exc
            if isinstance(res, _T):
                res = [res]
            for i, t in enumerate(res):
                self.tensors[f"{name}:{i}"] = t
        graph_outputs = []
        for ref, key in zip(out_refs, out_keys):
            t = self.tensors[key]
            oname = ref if ":" in ref else f"{ref}:0"
            src = self.materialize(t, oname)
            self.nodes.append(helper.make_node("Identity", [src], [oname], name=self.uniq(f"{oname}/out")))
            dims = None if t.rank is None else [None] * t.rank  # filled in by shape inference
            graph_outputs.append(helper.make_tensor_value_info(oname, _ONNX_DTYPE[t.dtype], dims))
        graph = helper.make_graph(self.nodes, "tfjs", self.graph_inputs, graph_outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="veil.models.convert.tfjs")
        model.ir_version = 8
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
            for o, io in zip(model.graph.output, inferred.graph.output):
                if io.type.tensor_type.HasField("shape"):
                    o.type.CopyFrom(io.type)
        except Exception as exc:  # shapes are a courtesy; the graph is still valid
            log.debug("tfjs: shape inference failed: %s", exc)
        return model

    # -- helpers for op handlers -------------------------------------------------------------
    def const_of(self, t: _T, what: str) -> np.ndarray:
        if not t.is_const:
            raise ConversionError(f"{what} must be a constant")
        return t.value  # type: ignore[return-value]

    def unary(self, nd: dict, x: _T, op: str, fold: Callable | None = None, **attrs) -> _T:
        if x.is_const and fold is not None:
            return _T(value=np.asarray(fold(x.value)))
        out = self.node(op, [self.in_perm(x, x.perm)], nd["name"], **attrs)[0]
        return _T(out, perm=x.perm, shape=x.shape, dtype=x.dtype)

    def elementwise(self, nd: dict, ins: list[_T], op: str, fold: Callable | None = None,
                    out_dtype=None, base: str | None = None) -> _T:
        base = base or nd["name"]
        if all(t.is_const for t in ins) and fold is not None:
            return _T(value=np.asarray(fold(*[t.value for t in ins])))
        shape = _bcast([t.shape for t in ins])
        r = len(shape) if shape is not None else None
        perm: Perm = None
        for t in ins:
            if r is not None and not t.is_const and t.perm is not None and t.rank == r:
                perm = t.perm
                break
        if perm is not None:
            for t in ins:
                if not t.is_const and t.rank != r:
                    perm = None  # a lower-rank tensor operand: work in TF layout
        names = []
        for t in ins:
            if t.is_const:
                v = t.value
                if perm is not None:
                    v = np.transpose(v.reshape((1,) * (r - v.ndim) + v.shape), perm)  # type: ignore[operator]
                names.append(self.init(v, f"{nd['name']}/c"))
            else:
                names.append(self.in_perm(t, perm))
        out = self.node(op, names, base)[0]
        dtype = out_dtype or next((t.dtype for t in ins if not t.is_const), ins[0].dtype)
        return _T(out, perm=perm, shape=shape, dtype=dtype)

    def axis_of(self, t: _T, tf_axis: int) -> int:
        r = t.rank
        if tf_axis < 0:
            if r is None:
                raise ConversionError("negative axis on a tensor of unknown rank")
            tf_axis += r
        return tf_axis if t.perm is None else _inv(t.perm)[tf_axis]

    # -- inputs and constants -----------------------------------------------------------------
    def op_Placeholder(self, nd, ins):
        name = nd["name"]
        ref = f"{name}:0"
        for k, v in self.sig_inputs.items():
            if self._key(v.get("name", k)) == ref:
                ref = v.get("name", k)
                if ":" not in ref:
                    ref = f"{ref}:0"
                break
        dtype = _attr(nd, "dtype", np.dtype(np.float32))
        shape = _attr(nd, "shape")
        for v in self.sig_inputs.values():  # the signature may pin sizes the graph leaves open
            if self._key(v.get("name", "")) == f"{name}:0":
                sig = [int(d.get("size", -1)) for d in v.get("tensorShape", {}).get("dim", [])]
                if shape is None or (len(sig) == len(shape) and any(d < 0 for d in shape)):
                    shape = [a if a >= 0 else b for a, b in zip(shape or sig, sig)]
        dims: list = list(shape) if shape is not None else None  # type: ignore[assignment]
        if dims is not None:
            dims = [d if d >= 0 else ("batch" if i == 0 else f"d{i}") for i, d in enumerate(dims)]
            if self.dynamic and len(dims) == 4:
                for i in self.spatial_axes(shape):
                    dims[i] = "height" if i == self.spatial_axes(shape)[0] else "width"
        self.input_info = {"name": ref, "shape": shape, "dtype": np.dtype(dtype).name,
                           "layout": self.layout(shape)}
        self.graph_inputs.append(helper.make_tensor_value_info(ref, _ONNX_DTYPE[np.dtype(dtype)], dims))
        self.used.add(ref)
        return _T(ref, shape=shape, dtype=dtype)

    @staticmethod
    def layout(shape) -> str | None:
        if shape is None or len(shape) != 4:
            return None
        return "NCHW" if 0 < shape[1] <= 4 and (shape[3] > 4 or shape[3] < 0) else "NHWC"

    def spatial_axes(self, shape) -> tuple[int, int]:
        return (2, 3) if self.layout(shape) == "NCHW" else (1, 2)

    def op_Const(self, nd, ins):
        name = nd["name"]
        dtype = _attr(nd, "dtype")
        if name in self.weights:
            val = self.weights[name]
        else:
            val = _attr(nd, "value")
            if val is None:
                raise ConversionError(f"constant {name!r} has no value")
        if dtype is not None and dtype != np.dtype(object) and val.dtype != dtype:
            val = val.astype(dtype)
        return _T(value=np.asarray(val))

    def op_Identity(self, nd, ins):
        return ins[0]

    op_StopGradient = op_Snapshot = op_PreventGradient = op_Identity

    def op_IdentityN(self, nd, ins):
        return ins

    # -- convolution and pooling --------------------------------------------------------------
    def _conv_geometry(self, nd, x: _T, kh: int, kw: int):
        fmt = _attr(nd, "data_format", "NHWC")
        hw = (1, 2) if fmt == "NHWC" else (2, 3)
        strides = _attr(nd, "strides", [1, 1, 1, 1]) or [1, 1, 1, 1]
        dil = _attr(nd, "dilations", [1, 1, 1, 1]) or [1, 1, 1, 1]
        s = [strides[hw[0]], strides[hw[1]]]
        d = [dil[hw[0]], dil[hw[1]]]
        padding = _attr(nd, "padding", "VALID")
        attrs: dict[str, Any] = {"strides": s, "dilations": d}
        shape = x.shape
        in_hw = [shape[hw[0]], shape[hw[1]]] if shape is not None and len(shape) == 4 else [-1, -1]
        pads2 = [(0, 0), (0, 0)]
        if padding == "SAME":
            fixed: list[tuple[int, int]] = []
            for n, k, st, dd in zip(in_hw, (kh, kw), s, d):
                if st == 1:  # total padding = effective kernel - 1, whatever the size
                    fixed.append(_same_pads(1, k, 1, dd))
                elif n > 0 and not self.dynamic:
                    fixed.append(_same_pads(n, k, st, dd))
            if len(fixed) == 2:
                pads2 = fixed
                attrs["pads"] = [pads2[0][0], pads2[1][0], pads2[0][1], pads2[1][1]]
            else:  # depends on the (dynamic) input size: TF's rule is ONNX SAME_UPPER
                attrs["auto_pad"] = "SAME_UPPER"
        elif padding == "EXPLICIT":
            ep = _attr(nd, "explicit_paddings", [])
            pads2 = [(ep[2 * hw[0]], ep[2 * hw[0] + 1]), (ep[2 * hw[1]], ep[2 * hw[1] + 1])]
            attrs["pads"] = [pads2[0][0], pads2[1][0], pads2[0][1], pads2[1][1]]
        else:
            attrs["pads"] = [0, 0, 0, 0]
        out_hw = [_conv_out(n, k, st, dd, padding, p) for n, k, st, dd, p in zip(in_hw, (kh, kw), s, d, pads2)]
        return fmt, attrs, out_hw

    def _conv(self, nd, ins, depthwise: bool, fused: list[str] | None = None):
        x, w = ins[0], ins[1]
        f = self.const_of(w, "filter").astype(np.float32)
        kh, kw, cin, cout = f.shape
        if depthwise:
            wt = f.transpose(2, 3, 0, 1).reshape(cin * cout, 1, kh, kw)
            group = cin
            cout = cin * cout
        else:
            wt = f.transpose(3, 2, 0, 1)
            group = 1
            if x.shape is not None and len(x.shape) == 4:
                fmt0 = _attr(nd, "data_format", "NHWC")
                c_in = x.shape[3] if fmt0 == "NHWC" else x.shape[1]
                if c_in > 0 and c_in != cin:
                    group = c_in // cin
        fmt, attrs, out_hw = self._conv_geometry(nd, x, kh, kw)
        q = NCHW if fmt == "NHWC" else None
        bias = None
        act: list[tuple[str, dict]] = []
        extra_add = None
        if fused is not None:
            args = ins[2:]
            ops = list(fused)
            if ops and ops[0] == "BiasAdd":
                bias = self.const_of(args[0], "bias").astype(np.float32).reshape(-1)
                args = args[1:]
                ops = ops[1:]
            elif ops and ops[0] == "FusedBatchNorm":
                scale, offset, mean, var = (self.const_of(a, "batch norm").astype(np.float32) for a in args[:4])
                eps = _attr(nd, "epsilon", 1e-3) or 0.0
                mul = scale / np.sqrt(var + eps)
                wt = wt * mul.reshape(-1, 1, 1, 1)
                bias = offset - mean * mul
                args = args[4:]
                ops = ops[1:]
            if ops and ops[0] == "Add":
                extra_add = args[0]
                args = args[1:]
                ops = ops[1:]
            for a in ops:
                if a == "Relu":
                    act.append(("Relu", {}))
                elif a == "Relu6":
                    act.append(("Relu6", {}))
                elif a == "LeakyRelu":
                    act.append(("LeakyRelu", {"alpha": float(_attr(nd, "leakyrelu_alpha", 0.2))}))
                elif a == "Elu":
                    act.append(("Elu", {}))
                elif a == "Sigmoid":
                    act.append(("Sigmoid", {}))
                elif a == "Tanh":
                    act.append(("Tanh", {}))
                elif a == "Prelu":
                    act.append(("Prelu", {"alpha": args[0]}))
                    args = args[1:]
                else:
                    raise ConversionError(f"fused op {a!r} not supported")
        inputs = [self.in_perm(x, q), self.init(wt.astype(np.float32), f"{nd['name']}/W")]
        if bias is not None:
            inputs.append(self.init(bias.astype(np.float32), f"{nd['name']}/B"))
        base = nd["name"] if not act and extra_add is None else f"{nd['name']}/conv"
        out = self.node("Conv", inputs, base, group=group, kernel_shape=[kh, kw], **attrs)[0]
        n = x.shape[0] if x.shape is not None else -1
        tf_shape = [n, out_hw[0], out_hw[1], cout] if fmt == "NHWC" else [n, cout, out_hw[0], out_hw[1]]
        t = _T(out, perm=q, shape=tf_shape, dtype=np.dtype(np.float32))
        if bias is None and fused is None:
            self.bias_open[out] = (self.nodes[-1], cout, f"{nd['name']}:0")
        if extra_add is not None:
            t = self.elementwise({"name": f"{nd['name']}/add"}, [t, extra_add], "Add")
        for i, (a, kw_) in enumerate(act):
            last = i == len(act) - 1
            tn = nd["name"] if last else f"{nd['name']}/{a}"
            if a == "Relu6":
                lo, hi = self.init(np.float32(0), "zero"), self.init(np.float32(6), "six")
                o = self.node("Clip", [t.name, lo, hi], tn)[0]
            elif a == "Prelu":
                alpha = kw_["alpha"]
                t2 = self.elementwise({"name": tn}, [t, alpha], "PRelu")
                t = t2
                continue
            else:
                o = self.node(a, [t.name], tn, **kw_)[0]
            t = _T(o, perm=t.perm, shape=t.shape, dtype=t.dtype)
        return t

    def op_Conv2D(self, nd, ins):
        return self._conv(nd, ins, depthwise=False)

    def op_DepthwiseConv2dNative(self, nd, ins):
        return self._conv(nd, ins, depthwise=True)

    op_DepthwiseConv2d = op_DepthwiseConv2dNative

    def op__FusedConv2D(self, nd, ins):
        return self._conv(nd, ins, depthwise=False, fused=_attr(nd, "fused_ops", []))

    def op_FusedDepthwiseConv2dNative(self, nd, ins):
        return self._conv(nd, ins, depthwise=True, fused=_attr(nd, "fused_ops", []))

    def _pool(self, nd, ins, op):
        x = ins[0]
        k = _attr(nd, "ksize")
        fmt = _attr(nd, "data_format", "NHWC")
        hw = (1, 2) if fmt == "NHWC" else (2, 3)
        kh, kw = k[hw[0]], k[hw[1]]
        _, attrs, out_hw = self._conv_geometry(nd, x, kh, kw)
        attrs.pop("dilations", None)
        if op == "AveragePool":
            attrs["count_include_pad"] = 0
        q = NCHW if fmt == "NHWC" else None
        out = self.node(op, [self.in_perm(x, q)], nd["name"], kernel_shape=[kh, kw], **attrs)[0]
        shape = None
        if x.shape is not None:
            shape = list(x.shape)
            shape[hw[0]], shape[hw[1]] = out_hw
        return _T(out, perm=q, shape=shape, dtype=x.dtype)

    def op_MaxPool(self, nd, ins):
        return self._pool(nd, ins, "MaxPool")

    def op_AvgPool(self, nd, ins):
        return self._pool(nd, ins, "AveragePool")

    def _batchnorm(self, nd, ins):
        x = ins[0]
        scale, offset, mean, var = (self.const_of(a, "batch norm").astype(np.float32) for a in ins[1:5])
        eps = _attr(nd, "epsilon", 1e-3)
        mul = scale / np.sqrt(var + eps)
        add = offset - mean * mul
        if _attr(nd, "data_format", "NHWC") == "NCHW":
            mul, add = mul.reshape(-1, 1, 1), add.reshape(-1, 1, 1)
        t = self.elementwise({"name": f"{nd['name']}/mul"}, [x, _T(value=mul)], "Mul")
        return self.elementwise(nd, [t, _T(value=add)], "Add")

    op_FusedBatchNorm = op_FusedBatchNormV2 = op_FusedBatchNormV3 = _batchnorm

    # -- element-wise -----------------------------------------------------------------------
    def _add(self, nd, ins):
        a, b = ins
        # conv + constant per-channel vector -> conv bias
        for conv_t, c in ((a, b), (b, a)):
            if conv_t.is_const or not c.is_const or conv_t.name not in self.bias_open or conv_t.rank != 4:
                continue
            node, cout, key = self.bias_open[conv_t.name]
            if self.tensors.get(key) is not conv_t or self.consumers.get(key, 0) != 1:
                continue
            v = c.value
            tf_chan = conv_t.perm[1] if conv_t.perm is not None else 1  # ONNX channel axis is 1
            want = [1, 1, 1, 1]
            want[tf_chan] = cout
            if v.ndim > 4 or [1] * (4 - v.ndim) + list(v.shape) != want:
                continue
            node.input.append(self.init(v.reshape(-1).astype(np.float32), f"{nd['name']}/B"))
            del self.bias_open[conv_t.name]
            return _T(conv_t.name, perm=conv_t.perm, shape=conv_t.shape, dtype=conv_t.dtype)
        return self.elementwise(nd, ins, "Add", np.add)

    op_Add = op_AddV2 = _add

    def op_BiasAdd(self, nd, ins):
        x, b = ins
        if _attr(nd, "data_format", "NHWC") == "NCHW" and x.rank:
            bv = self.const_of(b, "bias")
            b = _T(value=bv.reshape((-1,) + (1,) * (x.rank - 2)))
        return self._add(nd, [x, b])

    def op_AddN(self, nd, ins):
        if len(ins) == 1:
            return ins[0]
        return self.elementwise(nd, ins, "Sum", lambda *v: np.sum(np.broadcast_arrays(*v), axis=0))

    def op_Sub(self, nd, ins):
        return self.elementwise(nd, ins, "Sub", np.subtract)

    def op_Mul(self, nd, ins):
        return self.elementwise(nd, ins, "Mul", np.multiply)

    def op_RealDiv(self, nd, ins):
        return self.elementwise(nd, ins, "Div", lambda a, b: (a / b).astype(a.dtype))

    def op_Div(self, nd, ins):
        if ins[0].dtype is not None and ins[0].dtype.kind in "iu":
            return self.op_FloorDiv(nd, ins)
        return self.op_RealDiv(nd, ins)

    def op_DivNoNan(self, nd, ins):
        if all(t.is_const for t in ins):
            a, b = ins[0].value, ins[1].value
            return _T(value=np.where(b == 0, 0, a / np.where(b == 0, 1, b)).astype(a.dtype))
        q = self.elementwise({"name": f"{nd['name']}/div"}, ins, "Div")
        zero = self.init(np.zeros((), ins[1].dtype), "zero")
        isz = self.node("Equal", [self.materialize(ins[1]), zero], f"{nd['name']}/isz")[0]
        out = self.node("Where", [isz, self.init(np.zeros((), q.dtype), "zero"), self.materialize(q)], nd["name"])[0]
        return _T(out, shape=q.shape, dtype=q.dtype)

    def op_Maximum(self, nd, ins):
        return self.elementwise(nd, ins, "Max", np.maximum)

    def op_Minimum(self, nd, ins):
        return self.elementwise(nd, ins, "Min", np.minimum)

    def op_Pow(self, nd, ins):
        return self.elementwise(nd, ins, "Pow", np.power)

    def op_SquaredDifference(self, nd, ins):
        if all(t.is_const for t in ins):
            return _T(value=np.square(ins[0].value - ins[1].value))
        d = self.elementwise({"name": f"{nd['name']}/sub"}, ins, "Sub")
        return self.elementwise(nd, [d, d], "Mul")

    def op_FloorDiv(self, nd, ins):
        if all(t.is_const for t in ins):
            return _T(value=np.asarray(np.floor_divide(ins[0].value, ins[1].value)))
        if ins[0].dtype is not None and ins[0].dtype.kind == "f":
            d = self.elementwise({"name": f"{nd['name']}/div"}, ins, "Div")
            return self.unary(nd, d, "Floor")
        m = self.elementwise({"name": f"{nd['name']}/mod"}, ins, "Mod")
        self.nodes[-1].attribute.append(helper.make_attribute("fmod", 0))
        s = self.elementwise({"name": f"{nd['name']}/sub"}, [ins[0], m], "Sub")
        return self.elementwise(nd, [s, ins[1]], "Div")

    def op_FloorMod(self, nd, ins):
        if all(t.is_const for t in ins):
            return _T(value=np.asarray(np.mod(ins[0].value, ins[1].value)))
        if ins[0].dtype is not None and ins[0].dtype.kind == "f":
            d = self.op_FloorDiv({"name": f"{nd['name']}/fd"}, ins)
            m = self.elementwise({"name": f"{nd['name']}/m"}, [d, ins[1]], "Mul")
            return self.elementwise(nd, [ins[0], m], "Sub")
        t = self.elementwise(nd, ins, "Mod")
        self.nodes[-1].attribute.append(helper.make_attribute("fmod", 0))
        return t

    def _cmp(op, fold):  # noqa: N805 - factory used in the class body
        def h(self, nd, ins):
            return self.elementwise(nd, ins, op, fold, out_dtype=np.dtype(np.bool_))

        return h

    op_Equal = _cmp("Equal", np.equal)
    op_Less = _cmp("Less", np.less)
    op_Greater = _cmp("Greater", np.greater)
    op_LessEqual = _cmp("LessOrEqual", np.less_equal)
    op_GreaterEqual = _cmp("GreaterOrEqual", np.greater_equal)
    op_LogicalAnd = _cmp("And", np.logical_and)
    op_LogicalOr = _cmp("Or", np.logical_or)

    def op_NotEqual(self, nd, ins):
        if all(t.is_const for t in ins):
            return _T(value=np.not_equal(ins[0].value, ins[1].value))
        e = self.elementwise({"name": f"{nd['name']}/eq"}, ins, "Equal", out_dtype=np.dtype(np.bool_))
        return self.unary(nd, e, "Not")

    def op_LogicalNot(self, nd, ins):
        return self.unary(nd, ins[0], "Not", np.logical_not)

    def _un(op, fold=None, **attrs):  # noqa: N805
        def h(self, nd, ins):
            return self.unary(nd, ins[0], op, fold, **attrs)

        return h

    op_Sigmoid = _un("Sigmoid", lambda v: 1 / (1 + np.exp(-v)))
    op_Tanh = _un("Tanh", np.tanh)
    op_Relu = _un("Relu", lambda v: np.maximum(v, 0))
    op_Elu = _un("Elu")
    op_Selu = _un("Selu")
    op_Softplus = _un("Softplus")
    op_Exp = _un("Exp", np.exp)
    op_Log = _un("Log", np.log)
    op_Abs = _un("Abs", np.abs)
    op_Neg = _un("Neg", np.negative)
    op_Sqrt = _un("Sqrt", np.sqrt)
    op_Floor = _un("Floor", np.floor)
    op_Ceil = _un("Ceil", np.ceil)
    op_Round = _un("Round", np.round)
    op_Sign = _un("Sign", np.sign)
    op_Sin = _un("Sin", np.sin)
    op_Cos = _un("Cos", np.cos)
    op_Erf = _un("Erf")
    op_Reciprocal = _un("Reciprocal", np.reciprocal)
    op_Inv = op_Reciprocal
    del _cmp, _un

    def op_Rsqrt(self, nd, ins):
        if ins[0].is_const:
            return _T(value=(1 / np.sqrt(ins[0].value)).astype(ins[0].dtype))
        s = self.unary({"name": f"{nd['name']}/sqrt"}, ins[0], "Sqrt")
        return self.unary(nd, s, "Reciprocal")

    def op_Square(self, nd, ins):
        return self.elementwise(nd, [ins[0], ins[0]], "Mul", np.multiply)

    def op_LeakyRelu(self, nd, ins):
        alpha = float(_attr(nd, "alpha", 0.2))
        return self.unary(nd, ins[0], "LeakyRelu", lambda v: np.where(v > 0, v, v * alpha), alpha=alpha)

    def op_Relu6(self, nd, ins):
        x = ins[0]
        if x.is_const:
            return _T(value=np.clip(x.value, 0, 6))
        lo, hi = self.init(np.zeros((), x.dtype), "zero"), self.init(np.full((), 6, x.dtype), "six")
        out = self.node("Clip", [x.name, lo, hi], nd["name"])[0]
        return _T(out, perm=x.perm, shape=x.shape, dtype=x.dtype)

    def op_Prelu(self, nd, ins):
        return self.elementwise(nd, ins, "PRelu")

    def op_Cast(self, nd, ins):
        dst = _attr(nd, "DstT", np.dtype(np.float32))
        x = ins[0]
        if x.is_const:
            return _T(value=x.value.astype(dst))
        if x.dtype == dst:
            return x
        out = self.node("Cast", [x.name], nd["name"], to=_ONNX_DTYPE[dst])[0]
        return _T(out, perm=x.perm, shape=x.shape, dtype=dst)

    def op_Softmax(self, nd, ins):
        x = ins[0]
        ax = self.axis_of(x, -1)
        out = self.node("Softmax", [x.name if not x.is_const else self.materialize(x)], nd["name"], axis=ax)[0]
        return _T(out, perm=x.perm, shape=x.shape, dtype=x.dtype)

    def op_Select(self, nd, ins):
        c, a, b = ins
        if all(t.is_const for t in ins):
            cv = c.value
            if cv.ndim == 1 and a.value.ndim > 1:
                cv = cv.reshape((-1,) + (1,) * (a.value.ndim - 1))
            return _T(value=np.where(cv, a.value, b.value))
        if c.rank == 1 and a.rank is not None and a.rank > 1:
            cn = self.node("Unsqueeze", [self.materialize(c), self.i64(list(range(1, a.rank)), "axes")],
                           f"{nd['name']}/cond")[0]
            c = _T(cn, shape=c.shape + [1] * (a.rank - 1), dtype=c.dtype)  # type: ignore[operator]
        return self.elementwise(nd, [c, a, b], "Where", out_dtype=a.dtype or b.dtype)

    def op_SelectV2(self, nd, ins):
        if all(t.is_const for t in ins):
            return _T(value=np.where(ins[0].value, ins[1].value, ins[2].value))
        return self.elementwise(nd, ins, "Where", out_dtype=ins[1].dtype or ins[2].dtype)

    # -- layout / shape ops -------------------------------------------------------------------
    def op_Transpose(self, nd, ins):
        x, p = ins
        perm = [int(v) for v in self.const_of(p, "Transpose perm")]
        if x.is_const:
            return _T(value=np.transpose(x.value, perm))
        r = len(perm)
        cur = x.perm if x.perm is not None else tuple(range(r))
        ip = _inv(perm)
        new = tuple(ip[cur[i]] for i in range(r))
        shape = None if x.shape is None else [x.shape[v] for v in perm]
        return _T(x.name, perm=new, shape=shape, dtype=x.dtype)

    def _pad(self, nd, ins, mode="constant"):
        x, p = ins[0], ins[1]
        pads = self.const_of(p, "paddings").astype(np.int64).reshape(-1, 2)
        cval = ins[2] if len(ins) > 2 else None
        if x.is_const and mode == "constant":
            cv = cval.value if cval is not None else 0
            return _T(value=np.pad(x.value, pads, constant_values=cv))
        r = pads.shape[0]
        order = x.perm if x.perm is not None else tuple(range(r))
        onnx_pads = [int(pads[order[i], 0]) for i in range(r)] + [int(pads[order[i], 1]) for i in range(r)]
        inputs = [self.in_perm(x, x.perm), self.i64(onnx_pads, f"{nd['name']}/pads")]
        if cval is not None and mode == "constant":
            inputs.append(self.init(np.asarray(self.const_of(cval, "pad value"), x.dtype).reshape(()), "pad_value"))
        out = self.node("Pad", inputs, nd["name"], mode=mode)[0]
        shape = None if x.shape is None else [d + int(a + b) if d >= 0 else -1 for d, (a, b) in zip(x.shape, pads)]
        return _T(out, perm=x.perm, shape=shape, dtype=x.dtype)

    def op_Pad(self, nd, ins):
        return self._pad(nd, ins)

    op_PadV2 = op_Pad

    def op_MirrorPad(self, nd, ins):
        mode = _attr(nd, "mode", "REFLECT")
        if mode != "REFLECT":
            raise ConversionError(f"MirrorPad mode {mode} not supported")
        return self._pad(nd, ins, "reflect")

    def op_ConcatV2(self, nd, ins):
        *vals, ax = ins
        axis = int(self.const_of(ax, "concat axis"))
        if all(t.is_const for t in vals):
            return _T(value=np.concatenate([t.value for t in vals], axis=axis))
        ref = next(t for t in vals if not t.is_const)
        r = ref.rank
        if r is None:
            raise ConversionError("concat of tensors with unknown rank")
        if axis < 0:
            axis += r
        perm = ref.perm
        names = [self.in_perm(t, perm, f"{nd['name']}/c") for t in vals]
        oax = axis if perm is None else _inv(perm)[axis]
        out = self.node("Concat", names, nd["name"], axis=oax)[0]
        shape = None
        if all(t.shape is not None for t in vals):
            shape = list(ref.shape)  # type: ignore[arg-type]
            dims = [t.shape[axis] for t in vals]  # type: ignore[index]
            shape[axis] = -1 if any(d < 0 for d in dims) else sum(dims)
        return _T(out, perm=perm, shape=shape, dtype=ref.dtype)

    def op_Concat(self, nd, ins):
        return self.op_ConcatV2(nd, ins[1:] + ins[:1])

    def _split(self, nd, x: _T, axis: int, sizes: list[int]):
        if x.is_const:
            idx = np.cumsum(sizes)[:-1]
            return [_T(value=v) for v in np.split(x.value, idx, axis=axis)]
        if axis < 0:
            axis += x.rank  # type: ignore[operator]
        oax = self.axis_of(x, axis)
        outs = self.node("Split", [x.name, self.i64(sizes, f"{nd['name']}/split")], nd["name"],
                         n_out=len(sizes), axis=oax)
        res = []
        for o, s in zip(outs, sizes):
            shape = None if x.shape is None else list(x.shape)
            if shape is not None:
                shape[axis] = s
            res.append(_T(o, perm=x.perm, shape=shape, dtype=x.dtype))
        return res

    def op_Split(self, nd, ins):
        ax, x = ins
        axis = int(self.const_of(ax, "split axis"))
        n = _attr(nd, "num_split")
        if x.shape is None or x.shape[axis] < 0:
            raise ConversionError("Split needs a known size on the split axis")
        return self._split(nd, x, axis, [x.shape[axis] // n] * n)

    def op_SplitV(self, nd, ins):
        x, sz, ax = ins
        axis = int(self.const_of(ax, "split axis"))
        sizes = [int(v) for v in self.const_of(sz, "split sizes")]
        if -1 in sizes:
            if x.shape is None or x.shape[axis] < 0:
                raise ConversionError("SplitV with -1 needs a known size on the split axis")
            sizes[sizes.index(-1)] = x.shape[axis] - (sum(sizes) + 1)
        return self._split(nd, x, axis, sizes)

    def op_Unpack(self, nd, ins):
        x = ins[0]
        axis = _attr(nd, "axis", 0)
        num = _attr(nd, "num")
        if x.is_const:
            return [_T(value=v) for v in np.moveaxis(x.value, axis, 0)]
        if axis < 0:
            axis += x.rank  # type: ignore[operator]
        parts = self._split(nd, x, axis, [1] * num)
        res = []
        for i, p in enumerate(parts):
            name = self.node("Squeeze", [self.materialize(p), self.i64([axis], "axes")], f"{nd['name']}:{i}")[0]
            shape = None if p.shape is None else p.shape[:axis] + p.shape[axis + 1 :]
            res.append(_T(name, shape=shape, dtype=x.dtype))
        return res

    def op_Pack(self, nd, ins):
        axis = _attr(nd, "axis", 0)
        if all(t.is_const for t in ins):
            return _T(value=np.stack([t.value for t in ins], axis=axis))
        ref = next(t for t in ins if not t.is_const)
        r = (ref.rank if ref.rank is not None else 0) + 1
        if axis < 0:
            axis += r
        names = []
        for t in ins:
            if t.is_const:
                names.append(self.init(np.expand_dims(t.value, axis), f"{nd['name']}/c"))
            else:
                names.append(self.node("Unsqueeze", [self.materialize(t), self.i64([axis], "axes")],
                                       f"{nd['name']}/u")[0])
        out = self.node("Concat", names, nd["name"], axis=axis)[0]
        shape = None if ref.shape is None else ref.shape[:axis] + [len(ins)] + ref.shape[axis:]
        dtype = ref.dtype
        return _T(out, shape=shape, dtype=dtype)

    def op_Reshape(self, nd, ins):
        x, s = ins
        if x.is_const and s.is_const:
            return _T(value=x.value.reshape([int(v) for v in s.value]))
        if s.is_const:
            sv = [int(v) for v in s.value]
            sname = self.i64(sv, f"{nd['name']}/shape")
            shape = sv
            if -1 in sv and x.shape is not None and all(d >= 0 for d in x.shape):
                known = int(np.prod([v for v in sv if v != -1]))
                shape = [int(np.prod(x.shape)) // known if v == -1 else v for v in sv]
        else:
            sname = self.node("Cast", [self.materialize(s)], f"{nd['name']}/shape", to=TensorProto.INT64)[0]
            shape = [-1] * s.shape[0] if s.shape else None
        out = self.node("Reshape", [self.materialize(x), sname], nd["name"])[0]
        return _T(out, shape=shape, dtype=x.dtype)

    def op_Squeeze(self, nd, ins):
        x = ins[0]
        dims = _attr(nd, "squeeze_dims", None) or _attr(nd, "axis", None) or []
        if x.is_const:
            return _T(value=np.squeeze(x.value, axis=tuple(dims) if dims else None))
        if not dims:
            if x.shape is None or -1 in x.shape:
                raise ConversionError("Squeeze without axes needs a known shape")
            dims = [i for i, d in enumerate(x.shape) if d == 1]
        r = x.rank
        dims = sorted(d + r if d < 0 else d for d in dims)  # type: ignore[operator]
        out = self.node("Squeeze", [self.materialize(x), self.i64(dims, "axes")], nd["name"])[0]
        shape = None if x.shape is None else [d for i, d in enumerate(x.shape) if i not in dims]
        return _T(out, shape=shape, dtype=x.dtype)

    def op_ExpandDims(self, nd, ins):
        x, a = ins
        axis = int(self.const_of(a, "ExpandDims axis"))
        if x.is_const:
            return _T(value=np.expand_dims(x.value, axis))
        r = (x.rank or 0) + 1
        if axis < 0:
            axis += r
        out = self.node("Unsqueeze", [self.materialize(x), self.i64([axis], "axes")], nd["name"])[0]
        shape = None if x.shape is None else x.shape[:axis] + [1] + x.shape[axis:]
        return _T(out, shape=shape, dtype=x.dtype)

    def op_Shape(self, nd, ins):
        x = ins[0]
        dt = _attr(nd, "out_type", np.dtype(np.int32))
        if x.is_const:
            return _T(value=np.asarray(x.value.shape, dt))
        if not self.dynamic and x.shape is not None and all(d >= 0 for d in x.shape):
            return _T(value=np.asarray(x.shape, dt))
        s = self.node("Shape", [x.name], f"{nd['name']}/raw")[0]
        if x.perm is not None:
            s = self.node("Gather", [s, self.i64(list(_inv(x.perm)), "perm")], f"{nd['name']}/tf", axis=0)[0]
        if dt != np.int64:
            s = self.node("Cast", [s], nd["name"], to=_ONNX_DTYPE[dt])[0]
        return _T(s, shape=[x.rank if x.rank is not None else -1], dtype=dt)

    def op_Size(self, nd, ins):
        x = ins[0]
        dt = _attr(nd, "out_type", np.dtype(np.int32))
        if x.is_const:
            return _T(value=np.asarray(x.value.size, dt))
        if not self.dynamic and x.shape is not None and all(d >= 0 for d in x.shape):
            return _T(value=np.asarray(int(np.prod(x.shape)), dt))
        s = self.node("Size", [x.name], f"{nd['name']}/raw")[0]
        s = self.node("Cast", [s], nd["name"], to=_ONNX_DTYPE[dt])[0]
        return _T(s, shape=[], dtype=dt)

    def op_Fill(self, nd, ins):
        dims, val = ins
        if dims.is_const and val.is_const:
            return _T(value=np.full([int(v) for v in dims.value], val.value, val.value.dtype))
        dn = self.node("Cast", [self.materialize(dims)], f"{nd['name']}/dims", to=TensorProto.INT64)[0]
        if val.is_const:
            out = self.node("ConstantOfShape", [dn], nd["name"],
                            value=numpy_helper.from_array(np.asarray(val.value).reshape(1)))[0]
        else:
            out = self.node("Expand", [self.materialize(val), dn], nd["name"])[0]
        shape = [-1] * dims.shape[0] if dims.shape else None
        return _T(out, shape=shape, dtype=val.dtype)

    def op_ZerosLike(self, nd, ins):
        x = ins[0]
        if x.is_const:
            return _T(value=np.zeros_like(x.value))
        s = self.node("Shape", [x.name], f"{nd['name']}/shape")[0]
        out = self.node("ConstantOfShape", [s], nd["name"],
                        value=numpy_helper.from_array(np.zeros(1, x.dtype)))[0]
        return _T(out, perm=x.perm, shape=x.shape, dtype=x.dtype)

    def op_OnesLike(self, nd, ins):
        x = ins[0]
        if x.is_const:
            return _T(value=np.ones_like(x.value))
        s = self.node("Shape", [x.name], f"{nd['name']}/shape")[0]
        out = self.node("ConstantOfShape", [s], nd["name"],
                        value=numpy_helper.from_array(np.ones(1, x.dtype)))[0]
        return _T(out, perm=x.perm, shape=x.shape, dtype=x.dtype)

    def op_Range(self, nd, ins):
        if all(t.is_const for t in ins):
            s, l, d = (t.value for t in ins)
            return _T(value=np.arange(s, l, d).astype(np.result_type(s, l, d)))
        dt = next(t.dtype for t in ins if not t.is_const)
        names = []
        for t in ins:
            if t.is_const:
                names.append(self.init(np.asarray(t.value, dt).reshape(()), f"{nd['name']}/c"))
            else:
                n = self.materialize(t)
                if t.shape:
                    n = self.node("Reshape", [n, self.i64([], "scalar")], f"{nd['name']}/s")[0]
                names.append(n)
        out = self.node("Range", names, nd["name"])[0]
        return _T(out, shape=[-1], dtype=dt)

    def op_Tile(self, nd, ins):
        x, m = ins
        if x.is_const and m.is_const:
            return _T(value=np.tile(x.value, m.value))
        mn = self.i64(m.value, "reps") if m.is_const else self.node(
            "Cast", [self.materialize(m)], f"{nd['name']}/reps", to=TensorProto.INT64)[0]
        out = self.node("Tile", [self.materialize(x), mn], nd["name"])[0]
        shape = None
        if x.shape is not None and m.is_const:
            shape = [d * int(k) if d >= 0 else -1 for d, k in zip(x.shape, m.value)]
        return _T(out, shape=shape, dtype=x.dtype)

    def op_StridedSlice(self, nd, ins):
        x, b, e, s = ins
        begin = [int(v) for v in self.const_of(b, "StridedSlice begin")]
        end = [int(v) for v in self.const_of(e, "StridedSlice end")]
        strides = [int(v) for v in self.const_of(s, "StridedSlice strides")]
        bm, em = _attr(nd, "begin_mask", 0), _attr(nd, "end_mask", 0)
        elm, nam, sam = _attr(nd, "ellipsis_mask", 0), _attr(nd, "new_axis_mask", 0), _attr(nd, "shrink_axis_mask", 0)
        # numpy index equivalent to the TF spec
        index: list = []
        for j in range(len(begin)):
            bit = 1 << j
            if elm & bit:
                index.append(Ellipsis)
            elif nam & bit:
                index.append(None)
            elif sam & bit:
                index.append(begin[j])
            else:
                index.append(slice(None if bm & bit else begin[j], None if em & bit else end[j], strides[j]))
        if x.is_const:
            return _T(value=np.asarray(x.value[tuple(index)]))
        r = x.rank
        if r is None:
            raise ConversionError("StridedSlice on a tensor of unknown rank")
        n_real = sum(1 for it in index if it is not None and it is not Ellipsis)
        if Ellipsis not in index:
            index.append(Ellipsis)
        full: list = []
        for it in index:
            if it is Ellipsis:
                full.extend([slice(None)] * (r - n_real))
            else:
                full.append(it)
        starts, ends, axes, steps, squeeze, new_axes = [], [], [], [], [], []
        in_ax = 0
        out_ax = 0
        big = np.iinfo(np.int64).max
        shape: list[int] | None = [] if x.shape is not None else None
        for it in full:
            if it is None:
                new_axes.append(out_ax)
                out_ax += 1
                if shape is not None:
                    shape.append(1)
                continue
            if isinstance(it, int):
                starts.append(it)
                ends.append(it + 1 if it != -1 else big)
                axes.append(in_ax)
                steps.append(1)
                squeeze.append(in_ax)
            else:
                st = it.step or 1
                if it.start is not None or it.stop is not None or st != 1:
                    starts.append(it.start if it.start is not None else (0 if st > 0 else big))
                    ends.append(it.stop if it.stop is not None else (big if st > 0 else -big))
                    axes.append(in_ax)
                    steps.append(st)
                if shape is not None:
                    d = x.shape[in_ax]  # type: ignore[index]
                    shape.append(len(range(d)[it]) if d >= 0 else -1)
                out_ax += 1
            in_ax += 1
        cur = self.materialize(x)
        if axes:
            cur = self.node("Slice", [cur, self.i64(starts, "starts"), self.i64(ends, "ends"),
                                      self.i64(axes, "axes"), self.i64(steps, "steps")], f"{nd['name']}/slice")[0]
        if squeeze:
            cur = self.node("Squeeze", [cur, self.i64(squeeze, "axes")], f"{nd['name']}/squeeze")[0]
        if new_axes:
            cur = self.node("Unsqueeze", [cur, self.i64(new_axes, "axes")], f"{nd['name']}/unsqueeze")[0]
        if cur == self.materialize(x):
            cur = self.node("Identity", [cur], nd["name"])[0]
        return _T(cur, shape=shape, dtype=x.dtype)

    def op_Slice(self, nd, ins):
        x, b, sz = ins
        begin = [int(v) for v in self.const_of(b, "Slice begin")]
        size = [int(v) for v in self.const_of(sz, "Slice size")]
        if x.is_const:
            return _T(value=x.value[tuple(slice(bb, None if s == -1 else bb + s) for bb, s in zip(begin, size))])
        big = np.iinfo(np.int64).max
        ends = [big if s == -1 else bb + s for bb, s in zip(begin, size)]
        out = self.node("Slice", [self.materialize(x), self.i64(begin, "starts"), self.i64(ends, "ends")],
                        nd["name"])[0]
        shape = None
        if x.shape is not None:
            shape = [(d - bb if d >= 0 else -1) if s == -1 else s for d, bb, s in zip(x.shape, begin, size)]
        return _T(out, shape=shape, dtype=x.dtype)

    def op_GatherV2(self, nd, ins):
        x, idx, ax = ins
        axis = int(self.const_of(ax, "gather axis"))
        if _attr(nd, "batch_dims", 0):
            raise ConversionError("GatherV2 with batch_dims is not supported")
        if x.is_const and idx.is_const:
            return _T(value=np.take(x.value, idx.value, axis=axis))
        if axis < 0:
            axis += x.rank  # type: ignore[operator]
        out = self.node("Gather", [self.materialize(x), self.materialize(idx)], nd["name"], axis=axis)[0]
        shape = None
        if x.shape is not None and idx.shape is not None:
            shape = x.shape[:axis] + idx.shape + x.shape[axis + 1 :]
        return _T(out, shape=shape, dtype=x.dtype)

    op_Gather = op_GatherV2

    def op_GatherNd(self, nd, ins):
        x, idx = ins
        if x.is_const and idx.is_const:
            iv = idx.value
            return _T(value=x.value[tuple(np.moveaxis(iv, -1, 0))])
        iname = self.node("Cast", [self.materialize(idx)], f"{nd['name']}/idx", to=TensorProto.INT64)[0]
        out = self.node("GatherND", [self.materialize(x), iname], nd["name"])[0]
        shape = None
        if x.shape is not None and idx.shape is not None and idx.shape[-1] >= 0:
            shape = idx.shape[:-1] + x.shape[idx.shape[-1] :]
        return _T(out, shape=shape, dtype=x.dtype)

    def op_SparseToDense(self, nd, ins):
        idx, shp, vals, dflt = (self.const_of(t, "SparseToDense input") for t in ins)
        dense = np.full([int(v) for v in shp.reshape(-1)], dflt, dtype=vals.dtype)
        if idx.size:
            idx = idx.reshape(idx.shape[0], -1) if idx.ndim == 2 else idx.reshape(-1, 1)
            dense[tuple(idx.T)] = vals
        return _T(value=dense)

    def _reduce(self, nd, ins, op, fold):
        x, a = ins
        axes = [int(v) for v in np.asarray(self.const_of(a, "reduction axes")).reshape(-1)]
        keep = bool(_attr(nd, "keep_dims", False))
        if x.is_const:
            return _T(value=np.asarray(fold(x.value, axis=tuple(axes), keepdims=keep)))
        r = x.rank
        axes = [v + r if v < 0 else v for v in axes]  # type: ignore[operator]
        keep_perm = x.perm if keep else None
        src = self.in_perm(x, keep_perm)
        oax = [self.axis_of(x, v) for v in axes] if keep_perm is not None else axes
        if op == "ReduceSum":
            out = self.node(op, [src, self.i64(oax, "axes")], nd["name"], keepdims=int(keep))[0]
        else:
            out = self.node(op, [src], nd["name"], axes=oax, keepdims=int(keep))[0]
        shape = None
        if x.shape is not None:
            shape = [1 if i in axes else d for i, d in enumerate(x.shape)] if keep else \
                [d for i, d in enumerate(x.shape) if i not in axes]
        return _T(out, perm=keep_perm, shape=shape, dtype=x.dtype)

    def op_Sum(self, nd, ins):
        return self._reduce(nd, ins, "ReduceSum", np.sum)

    def op_Max(self, nd, ins):
        return self._reduce(nd, ins, "ReduceMax", np.max)

    def op_Min(self, nd, ins):
        return self._reduce(nd, ins, "ReduceMin", np.min)

    def op_Mean(self, nd, ins):
        return self._reduce(nd, ins, "ReduceMean", np.mean)

    def op_Prod(self, nd, ins):
        return self._reduce(nd, ins, "ReduceProd", np.prod)

    def op_ArgMax(self, nd, ins):
        x, a = ins
        axis = int(self.const_of(a, "ArgMax axis"))
        dt = _attr(nd, "output_type", np.dtype(np.int64))
        if x.is_const:
            return _T(value=np.argmax(x.value, axis=axis).astype(dt))
        if axis < 0:
            axis += x.rank  # type: ignore[operator]
        out = self.node("ArgMax", [self.materialize(x)], f"{nd['name']}/raw", axis=axis, keepdims=0)[0]
        if dt != np.int64:
            out = self.node("Cast", [out], nd["name"], to=_ONNX_DTYPE[dt])[0]
        shape = None if x.shape is None else x.shape[:axis] + x.shape[axis + 1 :]
        return _T(out, shape=shape, dtype=dt)

    def op_TopKV2(self, nd, ins):
        x, k = ins
        kv = int(self.const_of(k, "TopK k"))
        vals, idx = self.node("TopK", [self.materialize(x), self.i64([kv], "k")], nd["name"], n_out=2,
                              axis=-1, largest=1, sorted=1)
        idx = self.node("Cast", [idx], f"{nd['name']}:1/i32", to=TensorProto.INT32)[0]
        shape = None if x.shape is None else x.shape[:-1] + [kv]
        return [_T(vals, shape=shape, dtype=x.dtype), _T(idx, shape=shape, dtype=np.dtype(np.int32))]

    # -- resize --------------------------------------------------------------------------------
    def _resize(self, nd, ins, mode):
        x, size = ins[0], ins[1]
        align = bool(_attr(nd, "align_corners", False))
        half = bool(_attr(nd, "half_pixel_centers", False))
        if align:
            ctm = "align_corners"
        elif half:
            ctm = "half_pixel"
        else:
            ctm = "asymmetric"
        attrs: dict[str, Any] = {"mode": mode, "coordinate_transformation_mode": ctm}
        if mode == "nearest":
            attrs["nearest_mode"] = "round_prefer_ceil" if half else ("round_prefer_ceil" if align else "floor")
        src = self.in_perm(x, NCHW)
        shape = None
        if size.is_const:
            hw = [int(v) for v in size.value]
            in_hw = x.shape[1:3] if x.shape is not None else [-1, -1]
            if x.shape is not None:
                shape = [x.shape[0], hw[0], hw[1], x.shape[3]]
            if self.dynamic and all(d > 0 for d in in_hw):
                scales = [1.0, 1.0, hw[0] / in_hw[0], hw[1] / in_hw[1]]
                out = self.node("Resize", [src, "", self.init(np.asarray(scales, np.float32), "scales")],
                                nd["name"], **attrs)[0]
                return _T(out, perm=NCHW, shape=shape, dtype=x.dtype)
            if x.shape is not None and x.shape[0] > 0 and x.shape[3] > 0:
                sizes = self.i64([x.shape[0], x.shape[3], hw[0], hw[1]], "sizes")
            else:
                nc = self.node("Slice", [self.node("Shape", [src], f"{nd['name']}/shape")[0], self.i64([0], "s"),
                                         self.i64([2], "e")], f"{nd['name']}/nc")[0]
                sizes = self.node("Concat", [nc, self.i64(hw, "hw")], f"{nd['name']}/sizes", axis=0)[0]
        else:
            nc = self.node("Slice", [self.node("Shape", [src], f"{nd['name']}/shape")[0], self.i64([0], "s"),
                                     self.i64([2], "e")], f"{nd['name']}/nc")[0]
            hw = self.node("Cast", [self.materialize(size)], f"{nd['name']}/hw", to=TensorProto.INT64)[0]
            sizes = self.node("Concat", [nc, hw], f"{nd['name']}/sizes", axis=0)[0]
            if x.shape is not None:
                shape = [x.shape[0], -1, -1, x.shape[3]]
        out = self.node("Resize", [src, "", "", sizes], nd["name"], **attrs)[0]
        return _T(out, perm=NCHW, shape=shape, dtype=x.dtype)

    def _depth_space(self, nd, ins, op):
        x = ins[0]
        bs = int(_attr(nd, "block_size"))
        if _attr(nd, "data_format", "NHWC") != "NHWC":
            raise ConversionError(f"{op} supports NHWC only")
        out = self.node(op, [self.in_perm(x, NCHW)], nd["name"], blocksize=bs,
                        **({"mode": "DCR"} if op == "DepthToSpace" else {}))[0]
        shape = None
        if x.shape is not None:
            n, h, w, c = x.shape
            f = bs if op == "DepthToSpace" else 1 / bs
            shape = [n, int(h * f) if h >= 0 else -1, int(w * f) if w >= 0 else -1, int(c / f / f) if c >= 0 else -1]
        return _T(out, perm=NCHW, shape=shape, dtype=x.dtype)

    def op_DepthToSpace(self, nd, ins):
        return self._depth_space(nd, ins, "DepthToSpace")

    def op_SpaceToDepth(self, nd, ins):
        return self._depth_space(nd, ins, "SpaceToDepth")

    def op_ResizeBilinear(self, nd, ins):
        return self._resize(nd, ins, "linear")

    def op_ResizeNearestNeighbor(self, nd, ins):
        return self._resize(nd, ins, "nearest")

    # -- matmul ----------------------------------------------------------------------------------
    def _matmul(self, nd, ins, fused=None):
        a, b = ins[0], ins[1]
        ta, tb = bool(_attr(nd, "transpose_a", False)), bool(_attr(nd, "transpose_b", False))
        an, bn = self.materialize(a), self.materialize(b)
        if ta:
            an = self.node("Transpose", [an], f"{nd['name']}/ta", perm=list(range(a.rank - 2)) + [a.rank - 1, a.rank - 2])[0]  # type: ignore[operator]
        if tb:
            if b.is_const:
                bn = self.init(np.swapaxes(b.value, -1, -2), f"{nd['name']}/b")
            else:
                bn = self.node("Transpose", [bn], f"{nd['name']}/tb", perm=list(range(b.rank - 2)) + [b.rank - 1, b.rank - 2])[0]  # type: ignore[operator]
        base = nd["name"] if not fused else f"{nd['name']}/mm"
        out = self.node("MatMul", [an, bn], base)[0]
        shape = None
        if a.shape is not None and b.shape is not None:
            m = a.shape[-1] if ta else a.shape[-2]
            n = b.shape[-2] if tb else b.shape[-1]
            shape = list(a.shape[:-2]) + [m, n]
        t = _T(out, shape=shape, dtype=a.dtype)
        if fused:
            args = ins[2:]
            for i, op in enumerate(fused):
                last = i == len(fused) - 1
                nm = {"name": nd["name"] if last else f"{nd['name']}/{op}"}
                if op == "BiasAdd":
                    t = self.elementwise(nm, [t, args.pop(0)], "Add")
                elif op == "Relu":
                    t = self.unary(nm, t, "Relu")
                elif op == "Relu6":
                    t = self.op_Relu6(nm, [t])
                elif op == "LeakyRelu":
                    t = self.unary(nm, t, "LeakyRelu", alpha=float(_attr(nd, "leakyrelu_alpha", 0.2)))
                elif op in ("Elu", "Sigmoid", "Tanh"):
                    t = self.unary(nm, t, op)
                elif op == "Prelu":
                    t = self.elementwise(nm, [t, args.pop(0)], "PRelu")
                else:
                    raise ConversionError(f"fused op {op!r} not supported")
        return t

    def op_MatMul(self, nd, ins):
        return self._matmul(nd, ins)

    op_BatchMatMul = op_BatchMatMulV2 = op_MatMul

    def op__FusedMatMul(self, nd, ins):
        return self._matmul(nd, ins, fused=_attr(nd, "fused_ops", []))


# ---------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------


def convert_to_model(model_json: Path, dynamic_hw: bool = False) -> tuple[onnx.ModelProto, dict]:
    """Build the ONNX model in memory: ``(model, {"input": ..., "layout": ...})``."""
    model, weights = load_tfjs(Path(model_json))
    b = _Builder(model, weights, dynamic_hw)
    onnx_model = b.build()
    if not b.input_info:
        raise ConversionError(f"{model_json}: the graph has no Placeholder input")
    if len(b.graph_inputs) != 1:
        raise ConversionError(f"{model_json}: {len(b.graph_inputs)} inputs; only single-input models are supported")
    onnx.checker.check_model(onnx_model)
    return onnx_model, b.input_info


def _probe(model: onnx.ModelProto, inp: dict, shape: list[int], seed: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    dt = np.dtype(inp["dtype"])
    x = rng.integers(0, 256, shape).astype(dt) if dt.kind in "iu" else rng.standard_normal(shape).astype(dt)
    names = [o.name for o in sess.get_outputs()]
    return names, sess.run(names, {inp["name"]: x})


def convert(model_json: Path, dst: Path, *, dynamic_hw: bool = True) -> dict:
    """Convert a TFJS graph model to ONNX at ``dst``; returns its I/O metadata.

    ``{"input": {"name", "shape", "dtype", "layout"}, "outputs": [{"name", "shape"}],
    "dynamic_hw": bool, "opset": int}``. Shapes are the ones at the declared input size;
    with ``dynamic_hw`` the ONNX input's height and width are symbolic (``"height"``,
    ``"width"``) and the output sizes follow them.
    """
    model_json, dst = Path(model_json), Path(dst)
    fixed, inp = convert_to_model(model_json, dynamic_hw=False)
    shape = inp["shape"]
    concrete = [1 if d is None or d < 0 else d for d in shape] if shape else None
    chosen, is_dynamic, note = fixed, False, ""
    names, ref_outs = (None, None)
    if concrete is not None:
        names, ref_outs = _probe(fixed, inp, concrete)
    if dynamic_hw and concrete is not None and len(concrete) == 4 and inp["layout"]:
        try:
            dyn, _ = convert_to_model(model_json, dynamic_hw=True)
            _, outs = _probe(dyn, inp, concrete)
            for a, b in zip(ref_outs, outs):  # type: ignore[arg-type]
                if a.shape != b.shape or not np.allclose(a, b, rtol=1e-3, atol=1e-4):
                    raise ValueError("dynamic graph differs from the fixed one at the declared size")
            alt = list(concrete)
            hi, wi = (2, 3) if inp["layout"] == "NCHW" else (1, 2)
            alt[hi] += 64
            alt[wi] += 128
            _probe(dyn, inp, alt)
            chosen, is_dynamic = dyn, True
        except Exception as exc:  # keep the fixed graph; say why
            note = f"input size kept fixed: {exc}"
            log.info("tfjs: %s", note)
    meta = {
        "input": {"name": inp["name"], "shape": shape, "dtype": inp["dtype"], "layout": inp["layout"]},
        "outputs": [{"name": n, "shape": list(o.shape)} for n, o in zip(names or [], ref_outs or [])],
        "dynamic_hw": is_dynamic,
        "opset": OPSET,
    }
    if note:
        meta["note"] = note
    for k, v in {"source": model_json.name, "dynamic_hw": str(is_dynamic)}.items():
        chosen.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(chosen, str(dst))
    return meta
