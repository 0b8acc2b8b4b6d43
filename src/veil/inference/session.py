"""onnxruntime sessions: CPU by default, CUDA (or another accelerator) when present.

Sessions are created once per process and model and reused; ``VEIL_THREADS`` caps the
threads each session uses (default: onnxruntime's choice, i.e. all cores).

On the CPU, sessions load each model's optimized graph, built once per machine and
onnxruntime release (``veil.inference.optimized``): the face model's session starts in
~70 instead of ~150 ms.
"""

from __future__ import annotations

import contextlib
import os
import threading

import onnxruntime as ort

from veil.inference.optimized import optimized_graph
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
            with contextlib.suppress(OSError):  # rebuilt at the next start
                path.unlink()
            sess = ort.InferenceSession(str(model), sess_options=opts, providers=prov)
        _SESSIONS[(name, arena)] = sess
        return sess


def sized_session(name: str, pixels: int) -> ort.InferenceSession:
    """The session to run model ``name`` on an input of ``pixels`` pixels: the arena one
    for small inputs of the ``ARENA_MODELS`` on the CPU, else the plain one (an
    accelerator's own allocator has nothing to gain from a second session)."""
    plain = get_session(name)
    if name in ARENA_MODELS and pixels <= ARENA_MAX_PIXELS and plain.get_providers()[0] == "CPUExecutionProvider":
        return get_session(name, arena=True)
    return plain
