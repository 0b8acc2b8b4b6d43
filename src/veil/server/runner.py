"""One function runs one task, wherever it runs: a thread of ``veil serve``, an RQ job
in ``veil worker``, or a test.

``run_task`` claims the image in the repository (one more attempt), reads the upload
from the blob store, runs the one pipeline, writes the result under a key of its own
attempt and settles the image; only the first attempt to settle wins (a re-run after a
lost worker cannot duplicate or corrupt a result: the loser deletes its blob). The
upload is dropped once its image is settled. The task that settles a job's last image
finishes the job (``complete``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from veil.errors import ImageError, ModelError, OptionsError, VeilError
from veil.pipeline.options import Options
from veil.server.blobs import BlobStore, blob_key, hold_ttl
from veil.server.config import ServerConfig
from veil.server.queue import Task
from veil.server.records import ACTIVE
from veil.server.repository import JobRepository

log = logging.getLogger("veil.server.runner")


class RetryTask(Exception):
    """An unexpected crash with attempts left: the queue should run the task again."""


def hidden_regions(report: Any) -> list[dict[str, Any]]:
    """Target and box of every hidden region (no scores, pixels or metadata)."""
    data = report.to_json() if hasattr(report, "to_json") else (report or {})
    regions = data.get("regions") if isinstance(data, dict) else None
    return [{"target": r["target"], "box": r["box"]} for r in regions or [] if "target" in r and "box" in r]


def detection_counts(report: Any) -> dict[str, int]:
    """Per-target counts from a pipeline report (``report.to_json()["detections"]``)."""
    data = report.to_json() if hasattr(report, "to_json") else (report or {})
    det = data.get("detections") if isinstance(data, dict) else None
    if isinstance(det, dict):
        return {str(k): int(v) if not isinstance(v, (list, tuple)) else len(v) for k, v in det.items()}
    if isinstance(det, list):
        out: dict[str, int] = {}
        for d in det:
            t = d.get("target") if isinstance(d, dict) else getattr(d, "target", None)
            if t:
                out[t] = out.get(t, 0) + 1
        return out
    return {}


def load_pipeline() -> Callable[..., Any]:
    from veil.pipeline.core import anonymize_bytes

    return anonymize_bytes


class Pipeline:
    """Calls ``anonymize_bytes`` (loaded lazily, so the server starts without models)."""

    def __init__(self, config: ServerConfig, fn: Callable[..., Any] | None = None):
        self.config = config
        self._fn = fn
        self._lock = threading.Lock()

    @property
    def fn(self) -> Callable[..., Any]:
        with self._lock:
            if self._fn is None:
                self._fn = load_pipeline()
            return self._fn

    def available(self) -> bool:
        try:
            _ = self.fn
        except Exception:  # noqa: BLE001 - a broken install must not take /health down
            log.exception("cannot load the pipeline")
            return False
        return True

    def __call__(self, data: bytes, options: Options, regions: list | None = None) -> Any:
        kwargs: dict[str, Any] = {"limits": self.config.limits.image_limits()}
        if regions is not None:
            kwargs["regions"] = regions
        return self.fn(data, options, **kwargs)


@dataclass
class TaskContext:
    """What a task needs besides its records and blobs."""

    #: ``anonymize(data, options) -> result`` (``.data``, ``.content_type``, ``.format``, ``.report``)
    anonymize: Callable[..., Any]
    #: called with the job id by the task that settles its last image
    complete: Callable[[str], None]
    #: the TTL of jobs whose record does not say (blobs are held :func:`~veil.server.blobs.hold_ttl` of the job's own)
    ttl: float
    #: attempts before an image that keeps crashing its worker is failed
    max_attempts: int = 1
    #: runs a video: ``video(src, options, progress, should_stop) -> (dst, report)``
    video: Callable[..., Any] | None = None


def _settle(task: Task, repo: JobRepository, ctx: TaskContext, status: str, **values: Any) -> bool:
    left = repo.settle(task.job_id, task.idx, status, **values)
    if left is None:
        return False
    if left == 0:
        ctx.complete(task.job_id)
    return True


def _fail(task: Task, blobs: BlobStore, repo: JobRepository, ctx: TaskContext, reason: str) -> str:
    _settle(task, repo, ctx, "failed", error=reason)
    blobs.delete(blob_key(task.job_id, "in", task.idx))
    return "failed"


def run_task(task: Task, blobs: BlobStore, repo: JobRepository, anonymize: Callable[..., Any] | TaskContext,
             **context: Any) -> str:
    """Run one task; returns ``"done"``, ``"failed"`` or ``"skipped"`` (nothing to do).

    ``anonymize`` is the pipeline callable (with ``complete=`` and ``ttl=`` given as
    keywords) or a whole :class:`TaskContext`. Raises :class:`RetryTask` when the
    pipeline crashed unexpectedly and attempts are left (the queue runs it again).
    """
    ctx = anonymize if isinstance(anonymize, TaskContext) else TaskContext(anonymize=anonymize, **context)
    img = repo.claim(task.job_id, task.idx)
    if img is None:  # the job is gone, or the image was deleted or settled by another attempt
        blobs.delete(blob_key(task.job_id, "in", task.idx))
        job = repo.get(task.job_id)
        if job is not None and job.status in ACTIVE and not any(i.status in ACTIVE for i in job.images):
            ctx.complete(task.job_id)  # an earlier completion failed half-way: finish it now
        return "skipped"
    job = repo.get(task.job_id)
    if job is None:
        return "skipped"
    hold = hold_ttl(job.expires_at - job.created)  # the job's own TTL, whoever runs it
    blobs.expire_job(task.job_id, hold)  # a running job's blobs live on
    if img.attempts > ctx.max_attempts:
        return _fail(task, blobs, repo, ctx, f"failed {ctx.max_attempts} times: the worker running it was lost")
    options = Options.from_mapping(job.options)
    if task.kind == "video":
        return _run_video(task, blobs, repo, ctx, options, img.attempts, hold)
    data = blobs.get(blob_key(task.job_id, "in", task.idx))
    if data is None:
        return _fail(task, blobs, repo, ctx, "the upload is no longer held (it expired, or the server restarted)")
    size = len(data)
    try:
        result = ctx.anonymize(data, options)
    except (ImageError, OptionsError, ModelError, VeilError) as exc:
        return _fail(task, blobs, repo, ctx, str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must not take the worker down
        if img.attempts < ctx.max_attempts:
            raise RetryTask(f"{type(exc).__name__}") from exc
        log.exception("job %s image %d: pipeline crashed", task.job_id, task.idx)
        return _fail(task, blobs, repo, ctx, f"internal error ({type(exc).__name__})")
    finally:
        del data
    out = bytes(result.data)
    counts, regions = detection_counts(result.report), hidden_regions(result.report)
    ctype, fmt = result.content_type, result.format
    del result
    key = blob_key(task.job_id, "out", task.idx, img.attempts)
    regions_key = blob_key(task.job_id, "regions", task.idx, img.attempts)
    blobs.put(key, out, hold)
    blobs.put(regions_key, json.dumps(regions).encode(), hold)
    won = _settle(task, repo, ctx, "done", detections=counts, content_type=ctype, format=fmt, size=len(out),
                  sha256=hashlib.sha256(out).hexdigest(), result_key=key)  # fmt: skip
    if not won:  # deleted meanwhile, or another attempt settled first
        blobs.delete(key, regions_key)
        return "skipped"
    blobs.delete(blob_key(task.job_id, "in", task.idx))
    log.debug("job %s image %d done (%d -> %d bytes)", task.job_id, task.idx, size, len(out))
    return "done"


def _run_video(task: Task, blobs: BlobStore, repo: JobRepository, ctx: TaskContext, options: Options,
               attempt: int, hold: float) -> str:
    """A video: its upload is a spool file (embedded) or Redis pieces (distributed), read
    in place; the result, written to an encrypted spool file, goes to the blob store. The
    upload stays until the video is settled, so a re-run after a lost worker finds it."""
    from veil.video import Cancelled

    if ctx.video is None:
        return _fail(task, blobs, repo, ctx, "this server cannot process videos")
    in_key = blob_key(task.job_id, "in", task.idx)
    src = blobs.get(in_key)
    if src is None:
        return _fail(task, blobs, repo, ctx, "the upload is no longer held (it expired, or the server restarted)")
    last = [0.0, 0.0]  # last progress write, last liveness check

    def progress(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5 or (total and done >= total):
            last[0] = now
            repo.set_progress(task.job_id, task.idx, {"stage": str(stage), "frames_done": int(done),
                                                       "frames_total": int(total) if total else None})  # fmt: skip

    alive = [True]

    def should_stop() -> bool:
        now = time.monotonic()
        if now - last[1] >= 0.25:
            last[1] = now
            job = repo.get(task.job_id)
            alive[0] = job is not None and job.images[task.idx].status == "processing"
        return not alive[0]

    repo.set_progress(task.job_id, task.idx, {"stage": "detect", "frames_done": 0, "frames_total": None})
    try:
        dst, report = ctx.video(src, options, progress, should_stop)
    except Cancelled:
        blobs.delete(in_key)
        return "skipped"
    except VeilError as exc:
        return _fail(task, blobs, repo, ctx, str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must not take the worker down
        if should_stop():
            blobs.delete(in_key)
            return "skipped"
        log.exception("job %s video %d: the video core crashed", task.job_id, task.idx)
        return _fail(task, blobs, repo, ctx, f"internal error ({type(exc).__name__})")
    from veil.server.videotasks import sha256_of

    digest, size = sha256_of(dst), dst.size
    key = blob_key(task.job_id, "out", task.idx, attempt)
    blobs.put(key, dst, hold)  # (Redis: copied in pieces, the local spool file shredded)
    done = {"stage": "done", "frames_done": report.frames, "frames_total": report.frames}
    won = _settle(task, repo, ctx, "done", detections=detection_counts(report), content_type=report.content_type,
                  format=report.extension.lstrip("."), size=size, sha256=digest, result_key=key,
                  video=report.to_json(), progress=done)  # fmt: skip
    blobs.delete(in_key)
    if not won:
        blobs.delete(key)
        return "skipped"
    return "done"
