"""The task queue: one task per image or video, JSON on the wire, never bytes.

A backend is given a *handler* (``handler(task)`` runs one task, see
:func:`veil.server.runner.run_task`) and receives the tasks of a job through
:meth:`TaskQueue.submit`. The embedded :class:`ThreadTaskQueue` runs handlers in worker
threads (onnxruntime releases the GIL during inference) and holds at most ``maxsize``
waiting *jobs*; the distributed one (:class:`veil.server.distributed.RqTaskQueue`) puts
tasks on RQ queues that ``veil worker`` processes serve.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

log = logging.getLogger("veil.server.queue")


@dataclass(frozen=True)
class Task:
    """One image (or video) of one job; everything else is in the job repository."""

    job_id: str
    idx: int
    kind: str = "image"  # or "video"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes | dict[str, Any]) -> "Task":
        d = raw if isinstance(raw, dict) else json.loads(raw)
        if not isinstance(d, dict) or not isinstance(d.get("job_id"), str) or not isinstance(d.get("idx"), int):
            raise ValueError("not a veil task")
        kind = d.get("kind", "image")
        if kind not in ("image", "video"):
            raise ValueError("not a veil task")
        return cls(d["job_id"], d["idx"], kind)


class QueueFull(Exception):
    """The queue holds ``maxsize`` waiting jobs; ``retry_after`` is a hint in seconds."""

    def __init__(self, retry_after: int):
        super().__init__("the job queue is full")
        self.retry_after = retry_after


@runtime_checkable
class TaskQueue(Protocol):
    def start(self, handler: Callable[[Task], None]) -> None:
        """Begin running ``handler(task)`` for submitted tasks (no-op where workers are
        other processes)."""

    def submit(self, tasks: Sequence[Task]) -> None:
        """Enqueue the tasks of one job, all or none; :class:`QueueFull` when no room is left."""

    def cancel(self, job_id: str) -> int:
        """Drop the waiting tasks of a job; returns how many (running ones notice that
        their job is gone through the repository)."""

    def stats(self) -> dict[str, int | float]:
        """``pending`` (jobs not started), ``pending_tasks``, ``running`` (tasks), ``workers``, ``capacity``."""

    def retry_after(self) -> int:
        """Seconds a refused client should wait."""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking tasks; wait for running ones up to ``timeout``."""


class ThreadTaskQueue:
    """Bounded FIFO of tasks served by ``workers`` daemon threads; ``maxsize`` counts the
    jobs none of whose tasks has started (a job being worked on is not waiting)."""

    def __init__(self, workers: int, maxsize: int):
        self.workers = int(workers)
        self.maxsize = int(maxsize)
        self._pending: collections.deque[Task] = collections.deque()
        self._waiting_jobs: collections.Counter[str] = collections.Counter()  # pending tasks per job
        self._started: set[str] = set()  # jobs with pending tasks of which one has started
        self._running = 0
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._handler: Callable[[Task], None] | None = None
        self._stopping = False
        self._avg_seconds = 2.0  # moving average of a task's run time, for Retry-After

    def start(self, handler: Callable[[Task], None]) -> None:
        with self._cond:
            if self._threads:
                return
            self._handler = handler
            self._stopping = False
            for i in range(self.workers):
                t = threading.Thread(target=self._loop, name=f"veil-worker-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def submit(self, tasks: Sequence[Task]) -> None:
        if not tasks:
            return
        with self._cond:
            if self._stopping or len(self._waiting_jobs.keys() - self._started) >= self.maxsize:
                raise QueueFull(self.retry_after())
            for t in tasks:
                self._pending.append(t)
                self._waiting_jobs[t.job_id] += 1
            self._cond.notify(len(tasks))

    def cancel(self, job_id: str) -> int:
        with self._cond:
            keep = [t for t in self._pending if t.job_id != job_id]
            dropped = len(self._pending) - len(keep)
            self._pending = collections.deque(keep)
            self._waiting_jobs.pop(job_id, None)
            self._started.discard(job_id)
            return dropped

    def retry_after(self) -> int:
        waiting = len(self._pending) + self._running
        return max(1, min(300, int(self._avg_seconds * waiting / max(1, self.workers)) + 1))

    def stats(self) -> dict[str, int | float]:
        with self._cond:
            return {"pending": len(self._waiting_jobs.keys() - self._started), "pending_tasks": len(self._pending),
                    "running": self._running, "workers": self.workers, "capacity": self.maxsize}  # fmt: skip

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._pending.clear()
            self._waiting_jobs.clear()
            self._started.clear()
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
                task = self._pending.popleft()
                self._waiting_jobs[task.job_id] -= 1
                self._started.add(task.job_id)
                if self._waiting_jobs[task.job_id] <= 0:
                    del self._waiting_jobs[task.job_id]
                    self._started.discard(task.job_id)
                self._running += 1
            t0 = time.monotonic()
            try:
                assert self._handler is not None
                self._handler(task)
            except Exception:  # the handler records its own failures; never kill a worker
                log.exception("task %s/%d crashed its handler", task.job_id, task.idx)
            finally:
                with self._cond:
                    self._running -= 1
                    self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * (time.monotonic() - t0)
