"""The job queue behind a small interface, so a distributed backend can replace the
in-process thread pool without touching the routes.

A backend is given a *handler* (``handler(job_id)`` processes one job end to end) and
receives job ids through :meth:`JobQueue.submit`. The in-process
:class:`ThreadPoolQueue` runs handlers in worker threads (onnxruntime releases the GIL
during inference) and holds at most ``maxsize`` waiting jobs.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable, Protocol, runtime_checkable

log = logging.getLogger("veil.server.queue")


class QueueFull(Exception):
    """The queue holds ``maxsize`` waiting jobs; ``retry_after`` is a hint in seconds."""

    def __init__(self, retry_after: int):
        super().__init__("the job queue is full")
        self.retry_after = retry_after


@runtime_checkable
class JobQueue(Protocol):
    def start(self, handler: Callable[[str], None]) -> None:
        """Begin running ``handler(job_id)`` for submitted jobs."""

    def submit(self, job_id: str) -> None:
        """Enqueue a job; raises :class:`QueueFull` when no room is left."""

    def cancel(self, job_id: str) -> bool:
        """Drop a waiting job (``True``) or flag a running one so it stops early."""

    def is_cancelled(self, job_id: str) -> bool:
        """Handlers poll this between images."""

    def stats(self) -> dict[str, int | float]:
        """``pending``, ``running``, ``workers``, ``capacity``."""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; wait for running ones up to ``timeout``."""


class ThreadPoolQueue:
    """Bounded FIFO of job ids served by ``workers`` daemon threads."""

    def __init__(self, workers: int, maxsize: int):
        self.workers = int(workers)
        self.maxsize = int(maxsize)
        self._pending: collections.deque[str] = collections.deque()
        self._running: set[str] = set()
        self._cancelled: set[str] = set()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._handler: Callable[[str], None] | None = None
        self._stopping = False
        self._avg_seconds = 2.0  # moving average of a job's run time, for Retry-After

    def start(self, handler: Callable[[str], None]) -> None:
        with self._cond:
            if self._threads:
                return
            self._handler = handler
            self._stopping = False
            for i in range(self.workers):
                t = threading.Thread(target=self._loop, name=f"veil-worker-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def submit(self, job_id: str) -> None:
        with self._cond:
            if self._stopping:
                raise QueueFull(self.retry_after())
            if len(self._pending) >= self.maxsize:
                raise QueueFull(self.retry_after())
            self._pending.append(job_id)
            self._cond.notify()

    def cancel(self, job_id: str) -> bool:
        with self._cond:
            try:
                self._pending.remove(job_id)
                return True
            except ValueError:
                pass
            if job_id in self._running:
                self._cancelled.add(job_id)
            return False

    def is_cancelled(self, job_id: str) -> bool:
        with self._cond:
            return job_id in self._cancelled

    def retry_after(self) -> int:
        waiting = len(self._pending) + len(self._running)
        return max(1, min(300, int(self._avg_seconds * waiting / max(1, self.workers)) + 1))

    def stats(self) -> dict[str, int | float]:
        with self._cond:
            return {
                "pending": len(self._pending),
                "running": len(self._running),
                "workers": self.workers,
                "capacity": self.maxsize,
            }

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._pending.clear()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = []

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job_id = self._pending.popleft()
                self._running.add(job_id)
            t0 = time.monotonic()
            try:
                assert self._handler is not None
                self._handler(job_id)
            except Exception:  # the handler records its own failures; never kill a worker
                log.exception("job %s crashed its handler", job_id)
            finally:
                with self._cond:
                    self._running.discard(job_id)
                    self._cancelled.discard(job_id)
                    self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * (time.monotonic() - t0)
