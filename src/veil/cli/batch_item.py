"""One file of a ``veil anonymize`` batch: the work its worker processes run.

Kept apart from the command line (typer, rich, the other commands): a worker process
imports this module to unpickle its task, and the less it imports the sooner it starts
on its first photo.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from veil.cli.lifeline import die_with_parent
from veil.errors import ModelError, VeilError
from veil.pipeline.options import Options


def init_worker(threads: int, parent: int) -> None:
    """A batch worker's set-up: it dies with the command and uses ``threads`` threads."""
    die_with_parent(parent)  # a kill -9 of the command must not leave workers writing
    import cv2

    cv2.setNumThreads(1)  # --jobs already uses the cores
    os.environ.setdefault("VEIL_THREADS", str(threads))  # before any model session exists


def process_one(src: str, dst: str, options: Options, dry_run: bool, in_place: bool, hashes: bool = False) -> dict[str, Any]:
    """Anonymize one file; never raises for a bad file (the batch goes on). With
    ``hashes``, ``item["_hashes"]`` holds the SHA-256 of the input and the output."""
    from veil.cli.resume import file_sha256
    from veil.pipeline.core import anonymize_file

    item: dict[str, Any] = {"path": src, "output": None if dry_run else dst, "ok": False}
    try:
        if not dry_run:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
        source_sha = file_sha256(src) if hashes else ""  # before: a changed input is redone next time
        report = anonymize_file(Path(src), None if dry_run else Path(dst), options, overwrite_input=in_place)
        item.update(ok=True, report=report.to_json())
        if hashes:
            item["_hashes"] = (source_sha, file_sha256(dst))
    except Exception as exc:  # noqa: BLE001 (recorded per file, see record_failure)
        record_failure(item, exc)
    return item


def record_failure(item: dict, exc: Exception) -> None:
    """Note why one file of a batch failed in its result ``item`` (the batch goes on):
    a missing model is fatal for the batch, a bad file or an OS error is that file's,
    anything else is a bug on one odd file that must not lose the rest of the batch."""
    if isinstance(exc, ModelError):
        item.update(error=str(exc), fatal=True)
    elif isinstance(exc, VeilError):
        item["error"] = str(exc)
    elif isinstance(exc, OSError):
        item["error"] = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    else:
        item["error"] = f"internal error ({type(exc).__name__}: {exc})"
