"""Choosing onnxruntime's kernel for each int8 convolution, by timing both on this machine.

onnxruntime runs an int8 convolution whose weights are symmetric (zero point 0, as the
quantizer writes them) on a dedicated kernel, and any other one as a matrix product. On a
CPU with AVX-512 VNNI and AMX the product is much faster for convolutions with many
channels on small feature maps (a 3x3 convolution of 256 channels on 80 x 48: 4.2 against
7.7 ms on one thread), the dedicated kernel for few channels on large maps. Which is faster
depends on the CPU, so it is measured where the model runs: both are timed on each
convolution, and a convolution whose product is clearly faster gets weights that select
it: the weights shifted by one at zero point -1 (``(w - 1) - (-1) = w``: int8 weights of a
symmetric quantizer lie in [-127, 127], so ``w - 1`` fits). On a CPU with 8-bit dot
products the integer sums, and so the outputs, are bit for bit the same (checked on the
timing input before anything is switched); only the time differs (the face model on one
thread: 107 against 92 ms on a 640 x 384 input; the plate model 19.0 against 17.9).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

#: the input the kernels are timed on (height, width): a photo letterboxed to 640, the size
#: the YOLO models mostly run at
TIMING_INPUT = (384, 640)
#: timed runs per variant (after one untimed); each convolution's median counts
TIMING_RUNS = 4
#: the product is taken where it is at least this much faster (timing noise never flips one)
GAIN = 0.9


def choose_kernels(path: Path) -> int:
    """Rewrite the optimized graph at ``path`` so each int8 convolution runs on the faster
    of its two kernels here; returns how many were switched (0: the file as it was). Left
    as it is: a graph without int8 convolutions or whose input is not one image, a CPU
    without 8-bit dot products (where onnxruntime's kernels may saturate partial sums,
    and ``w - 1`` could change a result), and any graph whose two variants do not give the
    same outputs bit for bit on the timing input."""
    if not _dot_product_cpu():
        return 0
    model = onnx.load(str(path))
    names = symmetric_convolutions(model)
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if not names or len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        return 0
    with tempfile.TemporaryDirectory(prefix="veil-kernels-") as tmp:
        dedicated, out_a = kernel_times(model.SerializeToString(), Path(tmp) / "a")
        variant = onnx.ModelProto()
        variant.CopyFrom(model)  # ``shifted`` edits in place
        product, out_b = kernel_times(shifted(variant, names).SerializeToString(), Path(tmp) / "b")
    if len(out_a) != len(out_b) or not all(np.array_equal(a, b) for a, b in zip(out_a, out_b)):
        return 0
    faster = {n for n in names if n in dedicated and n in product and product[n] < GAIN * dedicated[n]}
    if faster:
        part = path.with_name(path.name + ".kernels")
        try:
            onnx.save(shifted(model, faster), str(part))
            os.replace(part, path)  # the graph whole, switched or not
        finally:
            part.unlink(missing_ok=True)
    return len(faster)


def _dot_product_cpu() -> bool:
    """An x86-64 CPU with 8-bit dot products (AVX-512 VNNI, AVX-VNNI or AMX), from Linux's
    CPU flags; without them onnxruntime's u8 x s8 kernels add pairs of products in 16 bits."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def symmetric_convolutions(model: onnx.ModelProto) -> list[str]:
    """Names of the int8 convolutions (not grouped) that run on the dedicated kernel and
    own their weights and zero points (a tensor shared with another node is left)."""
    inits = {t.name: t for t in model.graph.initializer}
    uses = Counter(i for node in model.graph.node for i in node.input)
    out = []
    for node in model.graph.node:
        if node.op_type != "QLinearConv" or node.input[3] not in inits or node.input[5] not in inits:
            continue
        if uses[node.input[3]] > 1 or uses[node.input[5]] > 1:
            continue
        if any(a.name == "group" and a.i != 1 for a in node.attribute):
            continue  # depthwise: the product was slower on each one measured
        w, zp = numpy_helper.to_array(inits[node.input[3]]), numpy_helper.to_array(inits[node.input[5]])
        if w.dtype == np.int8 and not zp.any() and w.min() >= -127:
            out.append(node.name)
    return out


def shifted(model: onnx.ModelProto, names: set[str] | list[str]) -> onnx.ModelProto:
    """``model`` with the weights of convolutions ``names`` as ``w - 1`` at zero point -1."""
    inits = {t.name: t for t in model.graph.initializer}
    chosen = set(names)
    for node in model.graph.node:
        if node.op_type == "QLinearConv" and node.name in chosen:
            w, zp = numpy_helper.to_array(inits[node.input[3]]), numpy_helper.to_array(inits[node.input[5]])
            inits[node.input[3]].CopyFrom(numpy_helper.from_array((w.astype(np.int16) - 1).astype(np.int8), node.input[3]))
            inits[node.input[5]].CopyFrom(numpy_helper.from_array(np.full(zp.shape, -1, np.int8), node.input[5]))
    return model


def kernel_times(model: bytes, prefix: Path) -> tuple[dict[str, float], list[np.ndarray]]:
    """Median time of each node's kernel (µs) over ``TIMING_RUNS`` runs on one thread,
    from onnxruntime's profile (written under ``prefix``, never the working directory),
    and the outputs of the last run."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1  # a batch's workers run one thread each; the choice holds on more
    opts.enable_profiling = True
    opts.profile_file_prefix = str(prefix)
    sess = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    default = (1, 3, *TIMING_INPUT)
    shape = tuple(d if isinstance(d, int) and d > 0 else default[k] for k, d in enumerate(inp.shape))
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(TIMING_RUNS + 1):
        outputs = sess.run(None, {inp.name: x})
    profile = Path(sess.end_profiling())
    times: dict[str, list[float]] = defaultdict(list)
    for event in json.loads(profile.read_text()):
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            # onnxruntime's layout pass renames a node ``<name>_token_<k>``
            times[name.removesuffix("_kernel_time").split("_token_")[0]].append(float(event["dur"]))
    profile.unlink(missing_ok=True)
    return {n: statistics.median(v[1:]) for n, v in times.items() if len(v) > 1}, outputs
