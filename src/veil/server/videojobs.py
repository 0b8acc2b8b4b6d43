"""Videos of a job: the upload check, and the step the task runner calls.

The video core (:func:`veil.video.anonymize_video`) reads the input spool twice (detect,
then mask and encode) and writes the result into a fresh spool file; the runner
(:func:`veil.server.runner.run_task`) shreds the input whatever happens and keeps the
result in the blob store until the job drops it.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Callable

from veil.errors import VideoError
from veil.server.problems import Problem, field_error

log = logging.getLogger("veil.server.videojobs")

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


def video_runner(spool: Any) -> Callable[..., Any]:
    """The task runner's video step for this server: input spool in, a fresh encrypted
    spool out (shredded if anything fails)."""

    def run(src: Any, options: Any, progress: Callable[[str, int, int], None],
            should_stop: Callable[[], bool]) -> tuple[Any, Any]:  # fmt: skip
        dst = spool.create()
        try:
            src.seek(0)
            report = load_video_core()(src, dst, options, progress=progress, should_stop=should_stop)
            dst.flush()
        except BaseException:
            dst.shred()
            raise
        return dst, report

    return run
