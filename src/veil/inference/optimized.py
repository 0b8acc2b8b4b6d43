"""Each model's optimized graph, built once per machine and onnxruntime release.

Creating a session optimizes the model's graph first (the face model: ~80 of its ~150 ms),
and every worker process of a batch, every video job and every server start would do it
again. So the first session saves the graph with onnxruntime's hardware-independent
optimizations applied (up to the extended level: constant folding, the fusions that make
a quantized convolution one op) beside the model, with each int8 convolution on the
faster of onnxruntime's two kernels on this CPU (``veil.inference.kernels``; the same
outputs), and later sessions load that copy. The session still applies the remaining,
CPU-specific optimizations (memory layouts) when it loads it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Iterator

import onnxruntime as ort

#: how the copies' int8 kernels are chosen (``veil.inference.kernels``): copies made another
#: way are rebuilt
KERNELS_RECIPE = 2
#: temporary files of a build older than this were left by a killed process
STALE_BUILD_S = 3600.0


def optimized_graph(model: Path) -> Path:
    """The optimized copy of ``model`` (a converted ``model.onnx``), built on first use;
    ``model`` itself where no copy can be made now (a read-only cache, a full disk, or
    another process building it at this moment: it runs as before, only its start is
    slower).

    The copy's name holds what it depends on: onnxruntime's version, the machine's
    architecture and CPU (the kernels were timed on it), the kernel recipe and the model's
    SHA-256 as the store recorded it (or its size and modification time). A rebuilt model
    or a new recipe gets a new copy, and the older copies of the same onnxruntime release
    on this CPU are removed; copies for other releases or CPUs (another install or machine
    sharing the cache) are left alone."""
    release = f"{model.stem}.optimized-{ort.__version__}-{platform.machine()}-{_cpu()}-"
    copy = model.with_name(f"{release}k{KERNELS_RECIPE}-{_fingerprint(model)}.onnx")
    if os.access(copy, os.R_OK):
        return copy
    try:
        with _building(model) as ready:
            if not ready:
                return model
            if os.access(copy, os.R_OK):  # built by another process meanwhile
                return copy
            _build(model, copy)
    except Exception:  # noqa: BLE001 (a read-only cache, a full disk: the model runs as it is)
        return model
    for old in model.parent.glob(f"{release}*.onnx"):
        if old != copy:
            with contextlib.suppress(OSError):
                old.unlink()
    return copy


@functools.cache
def _cpu() -> str:
    """A short name for this CPU (its model and feature flags, from Linux's CPU info)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    except OSError:
        return "cpu"
    return hashlib.sha256("".join(dict.fromkeys(lines)).encode()).hexdigest()[:8]


def _fingerprint(model: Path) -> str:
    try:
        sha = json.loads((model.parent / "meta.json").read_text()).get("onnx_sha256")
    except (OSError, ValueError, AttributeError):
        sha = None
    if isinstance(sha, str) and len(sha) >= 16:
        return sha[:16]
    st = model.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


@contextlib.contextmanager
def _building(model: Path) -> Iterator[bool]:
    """Hold the right to build ``model``'s copy: ``True`` for one process at a time,
    ``False`` (at once) for the others; the holder also removes temporary files that a
    killed build left."""
    lock = model.with_name(f".{model.stem}.optimized.lock")
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            now = time.time()
            for tmp in model.parent.glob(f".{model.stem}.*.onnx.tmp"):
                with contextlib.suppress(OSError):
                    if now - tmp.stat().st_mtime > STALE_BUILD_S:
                        tmp.unlink()
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build(model: Path, copy: Path) -> None:
    """Write the optimized graph of ``model`` to ``copy`` (whole or not at all)."""
    fd, name = tempfile.mkstemp(prefix=f".{model.stem}.", suffix=".onnx.tmp", dir=model.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(tmp)
        ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
        try:
            from veil.inference.kernels import choose_kernels  # here: onnx takes ~0.6 s to import

            choose_kernels(tmp)
        except Exception:  # noqa: BLE001 (it leaves the graph whole; it runs as well on the default kernels)
            pass
        os.chmod(tmp, 0o644)  # readable by every user of a shared cache, not only its builder
        os.replace(tmp, copy)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
