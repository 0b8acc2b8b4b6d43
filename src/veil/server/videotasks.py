"""The video step of a task: input (a spool file, or Redis pieces) in, a fresh
encrypted spool file out.

The video core (:func:`veil.video.anonymize_video`) reads the input twice (detect, then
mask and encode) and writes the result into the new spool file; the runner
(:func:`veil.server.runner.run_task`) drops the input once the video is settled and
keeps the result in the blob store until the job drops it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

_HASH_PIECE = 1024 * 1024


def load_video_core() -> Callable[..., Any]:
    from veil.video import anonymize_video  # lazily: the server starts without the video stack

    return anonymize_video


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
