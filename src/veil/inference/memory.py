"""Give a worker's freed memory back to the system after a photo that grew it.

Detection buffers are large (tens to hundreds of MB) and change size with every photo.
Within one photo glibc's heap reuses them cheaply; between photos the freed pages would
stay resident (and fragment), which adds up at ``--jobs N``. So after each photo the
freed pages go back to the system, but only while the process is over a budget
(``KEEP_FREED_UNDER``): below it they are kept for the next photo, whose buffers would
otherwise be faulted in anew, page by page (trimming after every photo of a batch of
0.9 MP photos: 263 against 232 ms per photo, a sixth of the CPU time in the kernel;
backing the buffers with transparent huge pages instead, as earlier releases did, cut the
number of faults but not their cost). (Forcing every large buffer through mmap instead,
or onnxruntime's arena, costs far more: a page fault per buffer, or the arena's
power-of-two growth kept for the process' life; only CenterFace's small inputs get an
arena, see ``veil.inference.session.ARENA_MODELS``.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any

_libc: Any = None
#: freed memory is kept while the process's resident memory is under this many bytes: the
#: models and one ordinary photo's buffers (a worker with every model loaded and a 12 MP
#: photo's buffers is well over it, and trims back)
KEEP_FREED_UNDER = 512 * 2**20


def resident_bytes() -> int:
    """This process's resident memory (Linux; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def release_freed_memory(keep_under: int = 0) -> None:
    """Return freed heap pages to the system (glibc only; a no-op elsewhere), unless the
    process's resident memory is under ``keep_under`` bytes (0: always)."""
    global _libc
    if keep_under and 0 < resident_bytes() < keep_under:
        return
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
