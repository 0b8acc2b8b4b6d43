"""Videos at upload: the header check that answers 415 before a job is made (the
video step of a task is :mod:`veil.server.videotasks`)."""

from __future__ import annotations

import logging
from typing import Any

from veil.errors import VideoError
from veil.server.problems import Problem, field_error

log = logging.getLogger("veil.server.videojobs")


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
