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
        # buffers for the life of the process (the main cost of memory at --jobs N).
        opts.enable_cpu_mem_arena = False
        threads = os.environ.get("VEIL_THREADS")
        if threads:
            opts.intra_op_num_threads = max(1, int(threads))
            opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers())
        _SESSIONS[name] = sess
        return sess
