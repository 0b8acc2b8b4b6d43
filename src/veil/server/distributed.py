"""The distributed mode's task queue on RQ, and the parts ``veil serve --redis`` uses.

A task is one RQ job, ``veil.server.worker.run_image_task(task_json)``, with a
deterministic id (``<job id>-t<index>``: a job's task is never queued twice) and RQ's
``Retry``: a worker killed mid-task leaves its RQ job "abandoned" once its heartbeat
lapses, and RQ's registry maintenance (in any other worker) queues it again. Webhooks
are RQ jobs too (``deliver_webhook``, own queue, retried with back-off), so an API node
going down does not lose them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from veil.server.blobs import hold_ttl
from veil.server.config import ServerConfig
from veil.server.queue import QueueFull, Task

TASKS_QUEUE = "veil-tasks"
WEBHOOKS_QUEUE = "veil-webhooks"
#: a task is tried this many times before its image is failed (a worker lost each time)
MAX_ATTEMPTS = 3
#: seconds between webhook attempts (RQ's scheduler in the workers runs them)
WEBHOOK_INTERVALS = [1, 2, 4, 8, 16, 32, 64, 128]


def _require_rq() -> None:
    try:
        import redis  # noqa: F401
        import rq  # noqa: F401
    except ImportError:
        from veil.errors import VeilError

        raise VeilError('the distributed mode needs the "distributed" extra: pip install "veil[distributed]"') from None


class RqTaskQueue:
    """Tasks on an RQ queue in Redis; ``veil worker`` processes run them."""

    def __init__(self, r: Any, *, capacity_tasks: int, job_timeout: int = 3600, hold: float = 7260.0):
        from rq import Queue

        self.r = r
        self.queue = Queue(TASKS_QUEUE, connection=r)
        self.capacity_tasks = int(capacity_tasks)
        self.job_timeout = int(job_timeout)
        #: a task not started within this many seconds is dropped (its job's blobs are gone by then)
        self.hold = hold

    def start(self, handler: Callable[[Task], None]) -> None:
        pass  # the workers are other processes

    def submit(self, tasks: Sequence[Task]) -> None:
        from rq import Callback, Retry
        from rq.queue import Queue

        if not tasks:
            return
        if self.queue.count + len(tasks) > self.capacity_tasks:
            raise QueueFull(self.retry_after())
        jobs = [
            Queue.prepare_data("veil.server.worker.run_image_task", args=(t.to_json(),), job_id=f"{t.job_id}-t{t.idx}",
                               timeout=self.job_timeout * (6 if t.kind == "video" else 1), result_ttl=60, failure_ttl=3600,
                               retry=Retry(max=MAX_ATTEMPTS), ttl=int(self.hold),
                               on_failure=Callback("veil.server.worker.task_given_up"))  # fmt: skip
            for t in tasks
        ]
        self.queue.enqueue_many(jobs)

    def cancel(self, job_id: str) -> int:
        return 0  # a task of a deleted job finds no record and returns at once

    def stats(self) -> dict[str, int | float]:
        from rq import Worker

        return {"pending": self.queue.count, "pending_tasks": self.queue.count,
                "running": self.queue.started_job_registry.count,
                "workers": Worker.count(queue=self.queue), "capacity": self.capacity_tasks}  # fmt: skip

    def retry_after(self) -> int:
        return 5

    def stop(self, timeout: float = 10.0) -> None:
        pass


def notify_queued(r: Any) -> Callable[..., Any]:
    """``notify(url, event, payload, secret, job_id)`` that queues the webhook as an RQ job;
    the worker signs it with the job's key's secret, looked up there: no secret on the wire."""
    from rq import Callback, Queue, Retry

    queue = Queue(WEBHOOKS_QUEUE, connection=r)

    def notify(url: str, event: str, payload: dict[str, Any], secret: str, job_id: str, key_id: str | None = None) -> str:
        delivery = "dlv_" + secrets.token_hex(8)
        queue.enqueue("veil.server.worker.deliver_webhook", url, event, payload, job_id, delivery, key_id,
                      job_id=f"{job_id}-webhook", result_ttl=60, failure_ttl=3600,
                      retry=Retry(max=len(WEBHOOK_INTERVALS), interval=WEBHOOK_INTERVALS),
                      on_failure=Callback("veil.server.worker.webhook_given_up"))  # fmt: skip
        return delivery

    return notify


@dataclass
class DistributedParts:
    repo: Any
    blobs: Any
    queue: RqTaskQueue
    notify: Callable[..., Any]
    #: the secrets every node of this Redis shares (anonymous jobs' webhooks, download links)
    secret: Callable[[str], str]


def distributed_parts(config: ServerConfig) -> DistributedParts:
    """The repository, blob store, task queue and webhook sender on ``config.redis_url``."""
    _require_rq()
    from veil.server.redis_store import RedisBlobStore, RedisJobRepository, connect, shared_secret

    r = connect(config.redis_url or "")
    capacity = config.queue_size * config.limits.max_images_per_job
    return DistributedParts(RedisJobRepository(r), RedisBlobStore(r), RqTaskQueue(r, capacity_tasks=capacity, hold=hold_ttl(config.ttl)),
                            notify_queued(r), lambda name: shared_secret(r, name))  # fmt: skip
