"""Give a worker's freed memory back to the system after each photo.

Detection buffers are large (tens to hundreds of MB) and change size with every photo.
Within one photo glibc's heap reuses them cheaply; between photos the freed pages would
stay resident (and fragment), which adds up at ``--jobs N``. Trimming once per photo
keeps the reuse and returns the rest. (Forcing every large buffer through mmap instead,
or onnxruntime's arena, costs far more: a page fault per buffer, or the arena's
power-of-two growth kept for the process' life.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

_libc: Any = None


def release_freed_memory() -> None:
    """Return freed heap pages to the system (glibc only; a no-op elsewhere)."""
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _libc = lib if hasattr(lib, "malloc_trim") else False
            except OSError:  # not glibc (e.g. musl): nothing to trim
                pass
    if _libc:
        _libc.malloc_trim(0)
