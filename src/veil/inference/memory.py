"""Keep a worker's memory close to what its current photo needs.

Detection buffers are large (tens of MB) and change size with every photo. glibc's
allocator raises its mmap threshold after such blocks are freed, so later ones come from
the heap and stay resident after use; at ``--jobs N`` that idle memory adds up. Pinning
the threshold makes large buffers go back to the system as soon as they are freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_MMAP_THRESHOLD = -3
_THRESHOLD = 128 * 1024
_done = False


def return_large_buffers() -> None:
    """Pin glibc's mmap threshold (no-op elsewhere); safe to call more than once."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return
    _done = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        pass
