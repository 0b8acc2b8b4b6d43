"""onnxruntime sessions: CPU by default, CUDA (or another accelerator) when present.

Sessions are created once per process and model and reused; ``VEIL_THREADS`` caps the
threads each session uses (default: onnxruntime's choice, i.e. all cores).

On the CPU, each model's graph is optimized once per machine and onnxruntime release and
kept beside the model (see ``optimized_graph``): a batch's every worker process, a video
job and a server start load it instead of optimizing the graph again (the face model:
~70 against ~150 ms), with each int8 convolution on the kernel that is fastest on this
CPU (``veil.inference.kernels``).
"""

from __future__ import annotations

import os
import platform
import tempfile
import threading
from pathlib import Path

import onnxruntime as ort

from veil.models.store import default_store

if hasattr(ort, "disable_telemetry_events"):  # no telemetry events (see veil/__init__.py)
    ort.disable_telemetry_events()

_SESSIONS: dict[tuple[str, bool], ort.InferenceSession] = {}
_LOCK = threading.Lock()
#: Models that get a second session keeping a memory arena, for small inputs. Without one,
#: CenterFace in float allocates its large activations from the system anew on every run
#: (26 against 15 ms on a 672 x 384 input: a 720p video frame at ``fast``'s 0.25 MP, as
#: every frame between full passes gets in video); the other models run as fast without.
ARENA_MODELS = frozenset({"centerface"})
#: ... inputs of at most this many pixels run on that session. Its arena keeps the buffers
#: of the largest such run (about 15 MB at 0.25 MP, 70 MB at 0.5 MP, per concurrent run)
#: for the life of the process; larger inputs run on the plain session and keep nothing.
ARENA_MAX_PIXELS = 0.5e6
#: how the optimized copies' int8 kernels are chosen (``veil.inference.kernels``): copies
#: made another way are rebuilt
KERNELS_RECIPE = 1
_PREFERRED = ("CUDAExecutionProvider", "ROCMExecutionProvider", "CoreMLExecutionProvider")


def providers() -> list[str]:
    forced = os.environ.get("VEIL_PROVIDERS")
    available = ort.get_available_providers()
    if forced:
        return [p for p in forced.split(",") if p in available] or ["CPUExecutionProvider"]
    return [p for p in _PREFERRED if p in available] + ["CPUExecutionProvider"]


def get_session(name: str, *, arena: bool = False) -> ort.InferenceSession:
    """The shared session for model ``name`` (fetched on first use); ``arena``: the one
    that keeps a memory arena (see ``sized_session``)."""
    with _LOCK:
        sess = _SESSIONS.get((name, arena))
        if sess is not None:
            return sess
        model = default_store().path(name)
        prov = providers()
        path = optimized_graph(model) if prov[0] == "CPUExecutionProvider" else model
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # Inputs change size with every photo; an arena would keep the largest one's
        # buffers for the life of the process (the main cost of memory at --jobs N)
        opts.enable_cpu_mem_arena = arena
        # A photo or frame runs several models in turn: a finished run's pool threads kept
        # spinning for more work and took the cores from the next model's threads (faces +
        # plates of a 720p frame: 211 against 149-155 ms); within a run they still spin
        # between ops (not spinning at all: 171-176 ms, faces alone 10% slower)
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        threads = os.environ.get("VEIL_THREADS")
        if threads:
            opts.intra_op_num_threads = max(1, int(threads))
            opts.inter_op_num_threads = 1
        try:
            sess = ort.InferenceSession(str(path), sess_options=opts, providers=prov)
        except Exception:  # noqa: BLE001 (a damaged optimized copy; the model itself is checked)
            if path == model:
                raise
            path.unlink(missing_ok=True)
            sess = ort.InferenceSession(str(model), sess_options=opts, providers=prov)
        _SESSIONS[(name, arena)] = sess
        return sess


def optimized_graph(model: Path) -> Path:
    """``model`` with onnxruntime's hardware-independent graph optimizations applied (up to
    the extended level: constant folding, fusions such as a quantized convolution's), built
    on first use and cached beside it; ``model`` itself where the copy cannot be written.

    Each int8 convolution of the copy runs on the faster of onnxruntime's two kernels on
    this CPU, timed once when the copy is built (``veil.inference.kernels``; the same
    outputs). The copy's name holds what it depends on: onnxruntime's version, the
    machine's architecture, that recipe and the model file's size and modification time (a
    rebuilt model gets a new copy; older copies are removed). The session still applies
    the remaining, CPU-specific optimizations (memory layouts) when it loads the copy."""
    st = model.stat()
    key = f"{ort.__version__}-{platform.machine()}-k{KERNELS_RECIPE}-{st.st_size}-{st.st_mtime_ns}"
    copy = model.with_name(f"{model.stem}.optimized-{key}.onnx")
    if copy.is_file():
        return copy
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{model.stem}.", suffix=".onnx.tmp", dir=model.parent)
    except OSError:  # a read-only model store: optimized in memory at every start, as before
        return model
    os.close(fd)
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = tmp
        ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
        try:
            from veil.inference.kernels import choose_kernels  # here: onnx takes ~0.6 s to import

            choose_kernels(Path(tmp))
        except Exception:  # noqa: BLE001 (the graph runs as well on the default kernels)
            pass
        os.replace(tmp, copy)  # whole or not at all; two processes racing write the same
    except Exception:  # noqa: BLE001 (a full disk, say: the model runs as it is)
        Path(tmp).unlink(missing_ok=True)
        return model
    for old in model.parent.glob(f"{model.stem}.optimized-*.onnx"):
        if old != copy:
            old.unlink(missing_ok=True)
    return copy


def sized_session(name: str, pixels: int) -> ort.InferenceSession:
    """The session to run model ``name`` on an input of ``pixels`` pixels: the arena one
    for small inputs of the ``ARENA_MODELS`` on the CPU, else the plain one (an
    accelerator's own allocator has nothing to gain from a second session)."""
    plain = get_session(name)
    if name in ARENA_MODELS and pixels <= ARENA_MAX_PIXELS and plain.get_providers()[0] == "CPUExecutionProvider":
        return get_session(name, arena=True)
    return plain
