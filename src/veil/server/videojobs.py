"""One video of a job, run by a worker: encrypted spool in, encrypted spool out.

The video core (:func:`veil.video.anonymize_video`) reads the input spool twice (detect,
then mask and encode) and writes the result into a fresh spool file; progress lands in
the slot, in memory, for the job status. The input is shredded when this returns,
whatever happened; the result is shredded on failure, or kept until the job drops it.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any, Callable

from veil.errors import VeilError, VideoError
from veil.server.problems import Problem, field_error
from veil.server.store import dumps

if TYPE_CHECKING:
    from veil.server.jobs import JobManager, _JobState, _Slot

log = logging.getLogger("veil.server.jobs")

_HASH_PIECE = 1024 * 1024


def load_video_core() -> Callable[..., Any]:
    from veil.video import anonymize_video  # lazily: the server starts without the video stack

    return anonymize_video


def check_video(part: Any, index: int, field: str = "files") -> None:
    """415 at upload for a video whose header already shows it cannot be used (no video
    stream, an unreadable or truncated container); what only decoding can tell fails later,
    per file. Only the header is read (through the encrypted spool)."""
    from veil.video.container import open_input

    where = f"{field}[{index}]"
    part.spool.seek(0)
    try:
        container, _ = open_input(part.spool)
        container.close()
    except VideoError as exc:
        raise Problem(415, f"{where}: {exc}", slug="unsupported-media-type", errors=[field_error(where, str(exc))]) from None
    finally:
        part.spool.seek(0)


def sha256_of(f: Any) -> str:
    """The SHA-256 of a spool file's plaintext, read piece by piece."""
    h = hashlib.sha256()
    for at in range(0, f.size, _HASH_PIECE):
        h.update(f.pread(at, _HASH_PIECE))
    return h.hexdigest()


def process_video(jobs: JobManager, state: _JobState, idx: int, slot: _Slot) -> bool:
    """Anonymize the video of ``slot``; ``False`` when the job is gone (the worker stops)."""
    from veil.server.jobs import detection_counts
    from veil.video import Cancelled

    job_id = state.id
    with state.lock:
        src, slot.spool_in = slot.spool_in, None  # the worker owns the input now
    if src is None:  # deleted while queued
        return True
    jobs.store.execute(
        "UPDATE images SET status = 'processing' WHERE job_id = ? AND idx = ? AND status = 'queued'", (job_id, idx)
    )
    slot.progress = {"stage": "detect", "frames_done": 0, "frames_total": None}

    def progress(stage: str, done: int, total: int) -> None:
        slot.progress = {"stage": str(stage), "frames_done": int(done), "frames_total": int(total) if total else None}

    def should_stop() -> bool:
        return slot.deleted or not jobs._alive(job_id) or jobs.queue.is_cancelled(job_id)

    dst = jobs.spool.create()
    try:
        src.seek(0)
        report = load_video_core()(src, dst, state.options, progress=progress, should_stop=should_stop)
        dst.flush()
    except Cancelled:  # deleted or cancelled under it
        dst.shred()
        return jobs._alive(job_id)
    except VeilError as exc:
        dst.shred()
        jobs._image_failed(job_id, idx, str(exc), 0)
        return jobs._alive(job_id)
    except Exception as exc:  # noqa: BLE001 - a bug must not take the worker down
        dst.shred()
        if should_stop():  # deleted under it: the core saw its spool vanish
            return jobs._alive(job_id)
        log.exception("job %s video %d: the video core crashed", job_id, idx)
        jobs._image_failed(job_id, idx, f"internal error ({type(exc).__name__})", 0)
        return True
    finally:
        src.shred()
    if should_stop():
        dst.shred()
        return jobs._alive(job_id)
    digest = sha256_of(dst)
    ctype = report.content_type
    fmt = report.extension.lstrip(".")  # mp4, mov, mkv, ts: the download's extension
    with state.lock:  # serialised with _forget/_drop_image
        if not jobs._alive(job_id) or slot.deleted:
            dst.shred()
            return jobs._alive(job_id)
        slot.spool_out, slot.content_type, slot.format, slot.video_report = dst, ctype, fmt, report.to_json()
    slot.progress = {"stage": "done", "frames_done": report.frames, "frames_total": report.frames}
    jobs.store.execute(
        "UPDATE images SET status = 'done', detections = ?, content_type = ?, format = ?, size = ?, sha256 = ? "
        "WHERE job_id = ? AND idx = ? AND status != 'deleted'",
        (dumps(detection_counts(report)), ctype, fmt, dst.size, digest, job_id, idx),
    )
    return True
