"""onnxruntime sessions: CPU by default, CUDA (or another accelerator) when present.

Sessions are created once per process and model and reused; ``VEIL_THREADS`` caps the
threads each session uses (default: onnxruntime's choice, i.e. all cores).
"""

from __future__ import annotations

import os
import threading

import onnxruntime as ort

from veil.models.store import default_store

if hasattr(ort, "disable_telemetry_events"):  # no telemetry events (see veil/__init__.py)
    ort.disable_telemetry_events()

_SESSIONS: dict[str, ort.InferenceSession] = {}
_LOCK = threading.Lock()
#: Models whose session keeps a memory arena. Without one, CenterFace in float allocates its
#: large activations from the system anew on every run (26 against 15 ms on a 672 x 384
#: input: a 720p video frame at ``fast``'s 0.25 MP, as every frame between full passes
#: gets in video); the other models run as fast without one.
ARENA_MODELS = frozenset({"centerface"})
#: ... an input of more than this many pixels gives the arena's memory back after its run
#: (``run_options``), so only small inputs' buffers (~40 MB at 0.25 MP) stay for reuse.
ARENA_KEEP_PIXELS = 0.5e6
_PREFERRED = ("CUDAExecutionProvider", "ROCMExecutionProvider", "CoreMLExecutionProvider")


def providers() -> list[str]:
    forced = os.environ.get("VEIL_PROVIDERS")
    available = ort.get_available_providers()
    if forced:
        return [p for p in forced.split(",") if p in available] or ["CPUExecutionProvider"]
    return [p for p in _PREFERRED if p in available] + ["CPUExecutionProvider"]


def get_session(name: str) -> ort.InferenceSession:
    """The shared session for model ``name`` (fetched on first use)."""
    with _LOCK:
        sess = _SESSIONS.get(name)
        if sess is not None:
            return sess
        path = default_store().path(name)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # Inputs change size with every photo; an arena would keep the largest one's
        # buffers for the life of the process (the main cost of memory at --jobs N), so
        # only the models of ARENA_MODELS have one, emptied after large inputs.
        opts.enable_cpu_mem_arena = name in ARENA_MODELS
        threads = os.environ.get("VEIL_THREADS")
        if threads:
            opts.intra_op_num_threads = max(1, int(threads))
            opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers())
        _SESSIONS[name] = sess
        return sess


def _shrink_options() -> ort.RunOptions:
    opts = ort.RunOptions()
    opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return opts


_SHRINK = _shrink_options()


def run_options(name: str, pixels: int) -> ort.RunOptions | None:
    """Options for one run of model ``name`` on an input of ``pixels`` pixels: a model with
    an arena returns the memory of a large input's run to the system at its end."""
    return _SHRINK if name in ARENA_MODELS and pixels > ARENA_KEEP_PIXELS else None
