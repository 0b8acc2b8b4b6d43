"""``veil worker``: an RQ worker process that runs veil's tasks from Redis.

It loads the models once per process (the same pipeline as everywhere), runs tasks in
its own process (RQ's ``SimpleWorker``: no fork per task, so the loaded models stay)
with a heartbeat thread during each task, and serves the webhook queue first. A killed
worker's task is queued again by another worker once its heartbeat has lapsed
(``heartbeat`` seconds, checked every ``maintenance`` seconds); the repository's
attempt count fails an image that keeps losing its worker (:data:`MAX_ATTEMPTS`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from veil.server.blobs import BlobStore
from veil.server.completion import Completion
from veil.server.config import ServerConfig
from veil.server.distributed import MAX_ATTEMPTS, TASKS_QUEUE, WEBHOOKS_QUEUE, notify_queued
from veil.server.queue import Task
from veil.server.repository import JobRepository
from veil.server.runner import Pipeline, RetryTask, TaskContext, run_task
from veil.server.webhooks import deliver_once, payload_body

log = logging.getLogger("veil.server.worker")


@dataclass
class WorkerContext:
    config: ServerConfig
    repo: JobRepository
    blobs: BlobStore
    tasks: TaskContext
    secret_for: Any


#: set once per worker process by :func:`run_worker` (RQ calls the task functions by name)
CONTEXT: WorkerContext | None = None


def _context() -> WorkerContext:
    if CONTEXT is None:
        raise RuntimeError("veil task run outside a veil worker")
    return CONTEXT


def run_image_task(task_json: str) -> str:
    """The RQ job of one task (see :func:`veil.server.runner.run_task`)."""
    ctx = _context()
    try:
        task = Task.from_json(task_json)
    except (ValueError, TypeError):
        log.warning("a malformed task on the queue was dropped")
        return "skipped"
    try:
        return run_task(task, ctx.blobs, ctx.repo, ctx.tasks)
    except RetryTask as exc:
        raise RuntimeError(f"task crashed ({exc}); RQ runs it again") from exc


def task_given_up(job: Any, connection: Any, exc_type: Any, exc: Any, tb: Any) -> None:
    """RQ failure callback: after the last retry (or a lost worker with none left), fail the image."""
    if job.retries_left:
        return
    ctx = _context()
    try:
        task = Task.from_json(job.args[0])
    except (ValueError, IndexError, TypeError):
        return
    left = ctx.repo.settle(task.job_id, task.idx, "failed", error=f"failed {MAX_ATTEMPTS} times (its worker lost or crashed)")
    if left == 0:
        ctx.tasks.complete(task.job_id)


def deliver_webhook(url: str, event: str, payload: dict[str, Any], job_id: str, delivery_id: str,
                    key_id: str | None = None) -> str:  # fmt: skip
    """One attempt of a queued webhook; raising makes RQ try again later (its scheduler).
    Signed with the secret of the job's key (looked up here: no secret on the wire)."""
    from rq import get_current_job

    ctx = _context()
    rq_job = get_current_job()
    attempt = 1 + (len(rq_job.retry_intervals or []) - (rq_job.retries_left or 0)) if rq_job is not None else 1
    secret = ctx.secret_for(key_id)
    if secret is None:  # never signed with another secret than the key's
        log.warning("webhook for job %s dropped: its key is not in this worker's database", job_id)
        ctx.repo.set_webhook(job_id, "failed", attempt)
        return "refused"
    outcome = deliver_once(url, payload_body(payload), secret, event, delivery_id, attempt, job_id=job_id,
                           allow_private=ctx.config.allow_private_webhooks, allow_local=ctx.config.loopback,
                           timeout=ctx.config.webhook_timeout, user_agent="veil-webhook")  # fmt: skip
    if outcome == "failed":
        ctx.repo.set_webhook(job_id, "retrying", attempt)
        raise RuntimeError("the webhook receiver did not accept it; RQ retries")
    ctx.repo.set_webhook(job_id, outcome, attempt)
    return outcome


def webhook_given_up(job: Any, connection: Any, exc_type: Any, exc: Any, tb: Any) -> None:
    if job.retries_left:
        return
    ctx = _context()
    ctx.repo.set_webhook(job.args[3], "failed")


def worker_class(heartbeat: float) -> type:
    from rq import SimpleWorker
    from rq.worker import WorkerStatus

    class VeilWorker(SimpleWorker):
        """SimpleWorker (models stay loaded) that keeps the task's heartbeat alive from a
        thread while it runs, with a short TTL, so a killed worker is noticed in seconds."""

        def get_heartbeat_ttl(self, job: Any, working_time: float = 0.0) -> int:
            return max(2, int(round(heartbeat)))

        def execute_job(self, job: Any, queue: Any) -> None:
            execution = self.prepare_execution(job)
            stop = threading.Event()

            def beat() -> None:
                while not stop.wait(max(0.5, heartbeat / 3)):
                    try:
                        self.maintain_heartbeats(job, execution)
                    except Exception:  # noqa: BLE001 - Redis away for a moment: the next beat tries again
                        log.debug("heartbeat failed", exc_info=True)

            t = threading.Thread(target=beat, name="veil-heartbeat", daemon=True)
            t.start()
            try:
                self.perform_job(job, queue, execution)
            finally:
                stop.set()
                t.join(5)
            self.set_state(WorkerStatus.IDLE)

    return VeilWorker


def build_context(config: ServerConfig, *, anonymize: Any = None) -> WorkerContext:
    from veil.server.audit import AuditLog
    from veil.server.config import ensure_private_dir
    from veil.server.database import open_server_database
    from veil.server.keys import KeyManager
    from veil.server.redis_store import RedisBlobStore, RedisJobRepository, connect, shared_secret
    from veil.server.store import Store

    ensure_private_dir(config.data_dir)
    r = connect(config.redis_url or "")
    repo, blobs = RedisJobRepository(r), RedisBlobStore(r)
    db = open_server_database(config) if config.database else Store(config.db_path)
    keys, audit = KeyManager(db), AuditLog(db)
    anonymous = shared_secret(r, "webhook")

    def secret_for(key_id: str | None) -> str | None:
        if not key_id:
            return anonymous
        key = keys.get(key_id)
        return key.secret if key else None

    pipeline = Pipeline(config, anonymize)
    complete = Completion(repo, blobs, audit, config.ttl, secret_for, notify_queued(r))
    from veil.server.spool import SpoolDir
    from veil.server.videotasks import video_runner

    # a video's result is written to an encrypted spool file here, then copied to Redis
    video = video_runner(SpoolDir(config.data_dir / "spool"))
    tasks = TaskContext(anonymize=pipeline, complete=complete, ttl=config.ttl, max_attempts=MAX_ATTEMPTS, video=video)
    return WorkerContext(config, repo, blobs, tasks, secret_for)


def warm_up(preset: str | None) -> float:
    """Load the models of ``preset`` now (one tiny image through the pipeline); seconds taken."""
    if not preset:
        return 0.0
    import io

    import numpy as np
    from PIL import Image

    from veil.pipeline.core import anonymize_bytes
    from veil.pipeline.options import Options

    t0 = time.monotonic()
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buf, "PNG")
    anonymize_bytes(buf.getvalue(), Options.from_mapping({"preset": preset}))
    return time.monotonic() - t0


def run_worker(config: ServerConfig, *, name: str | None = None, heartbeat: float = 10.0, maintenance: float = 10.0,
               burst: bool = False, preset: str | None = "balanced") -> None:  # fmt: skip
    """Serve tasks until stopped (SIGTERM/SIGINT finish the task under way first)."""
    global CONTEXT
    from rq import Queue

    from veil.server.redis_store import connect

    CONTEXT = build_context(config)
    took = warm_up(preset)
    if took:
        log.info("models of preset %s loaded in %.1f s", preset, took)
    # the worker's own connection: RQ blocks on it for the queues, longer than a request
    r = connect(config.redis_url or "", timeout=max(30.0, maintenance + 25))
    queues = [Queue(WEBHOOKS_QUEUE, connection=r), Queue(TASKS_QUEUE, connection=r)]
    cls = worker_class(heartbeat)
    # an idle RQ worker blocks on the queues for worker_ttl - 15 s and runs its maintenance
    # (which re-queues abandoned tasks) between waits: keep that wait at ``maintenance``
    every = max(1, int(maintenance))
    worker = cls(queues, connection=r, name=name, maintenance_interval=every, worker_ttl=every + 15,
                 job_monitoring_interval=max(1, int(heartbeat / 3)))  # fmt: skip
    worker.work(burst=burst, with_scheduler=True, logging_level=logging.getLevelName(log.getEffectiveLevel()))
