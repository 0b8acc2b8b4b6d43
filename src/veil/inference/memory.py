"""Give a worker's freed memory back to the system after each photo.

Detection buffers are large (tens to hundreds of MB) and change size with every photo.
Within one photo glibc's heap reuses them cheaply; between photos the freed pages would
stay resident (and fragment), which adds up at ``--jobs N``. Trimming once per photo
keeps the reuse and returns the rest. (Forcing every large buffer through mmap instead,
or onnxruntime's arena, costs far more: a page fault per buffer, or the arena's
power-of-two growth kept for the process' life; only CenterFace's small inputs get an
arena, see ``veil.inference.session.ARENA_MODELS``.)
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from typing import Any, Iterator

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


_HUGE_PAGES = "glibc.malloc.hugetlb=1"


@contextlib.contextmanager
def huge_pages_for_children() -> Iterator[None]:
    """Let worker processes started inside this block back large buffers with transparent
    huge pages. A photo's biggest buffers (over glibc's 32 MB mmap limit) are mapped afresh
    each time; with 4 KB pages the kernel's page faults cost about a fifth of the CPU time,
    with 2 MB pages far less. glibc reads the setting only at start-up, so it is put in the
    environment the children inherit and taken out again afterwards; other C libraries
    ignore it."""
    before = os.environ.get("GLIBC_TUNABLES")
    current = before or ""
    if sys.platform.startswith("linux") and "glibc.malloc.hugetlb" not in current:
        os.environ["GLIBC_TUNABLES"] = f"{current}:{_HUGE_PAGES}" if current else _HUGE_PAGES
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("GLIBC_TUNABLES", None)
        else:
            os.environ["GLIBC_TUNABLES"] = before
