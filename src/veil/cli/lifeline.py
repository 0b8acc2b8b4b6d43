"""Worker processes that die with their parent.

A ``kill -9`` of ``veil anonymize`` gives its worker processes no chance to be told: left
alone they would go on for minutes, writing outputs nobody asked for any more. On Linux
the kernel kills them itself (``PR_SET_PDEATHSIG``); elsewhere a thread in each worker
watches its parent and ends the worker when the parent is gone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1
#: Seconds between two looks at the parent (the fallback, where there is no prctl).
WATCH_INTERVAL = 1.0


def die_with_parent(parent: int) -> str:
    """Arrange for this process to end when ``parent`` (its parent's pid) does; returns
    the means used (``"pdeathsig"`` or ``"watch"``). Call it first thing in a worker."""
    how = "pdeathsig" if sys.platform.startswith("linux") and _pdeathsig() else "watch"
    if how == "watch":
        threading.Thread(target=_watch, args=(parent,), name="veil-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    return how


def _pdeathsig() -> bool:
    # The signal follows the *thread* that started this process; ProcessPoolExecutor
    # starts spawn workers from the thread that submits (the command's main thread).
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_INTERVAL)
    os._exit(1)  # the parent is gone: nothing this worker makes would be collected
