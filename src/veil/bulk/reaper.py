"""A watchdog so a ``kill -9`` of the command takes the local Ray it started with it.

Ray's own reaper stops most of a local cluster when its driver dies, but some of its
agents outlive a SIGKILL'd driver. :func:`reap_descendants_on_exit` starts a small
process that holds a pipe from this one and notes this process's descendants every
second; when the pipe closes (this process ended, however), it kills the descendants it
last saw that are still the same processes (same start time: no pid reused).
"""

from __future__ import annotations

import os
import subprocess
import sys

_WATCHDOG = r"""
import os, select, signal, sys

parent = int(sys.argv[1])

def table():
    kids, start = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        pid = int(name)
        kids.setdefault(int(fields[1]), []).append(pid)
        start[pid] = fields[19]
    return kids, start

def descendants():
    kids, start = table()
    out, todo = {}, [parent]
    while todo:
        for child in kids.get(todo.pop(), []):
            if child != os.getpid() and child not in out:
                out[child] = start[child]
                todo.append(child)
    return out

seen = {}
while True:
    ready, _, _ = select.select([0], [], [], 1.0)
    if ready and not os.read(0, 1):
        break
    seen = descendants()
_, start = table()
for pid, began in seen.items():
    if start.get(pid) == began:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""

_PIPE: list[int] = []  # the write end, held open for this process's life


def reap_descendants_on_exit() -> None:
    """Start the watchdog (once per process; Linux only, elsewhere nothing)."""
    if _PIPE or not sys.platform.startswith("linux"):
        return
    r, w = os.pipe()  # neither end is inherited by later children (close-on-exec)
    subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid())], stdin=r, start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    os.close(r)
    _PIPE.append(w)
