"""Resuming a batch: which outputs are already complete, and what a killed run left behind.

A run with ``-o OUTDIR`` appends one line to a record of that folder for every output it
finishes: the output's path (relative to OUTDIR), the SHA-256 of the input it was made
from and of the output as written, and a fingerprint of the options (every option, veil's
version and ``VEIL_LICENSES``). The next run skips an output only when all of these still
match: a changed input, changed options or an output changed by hand is made again. A
line is appended only after its output is on disk (atomically, so an output is never
half-written), and a line cut short by a kill is ignored.

The record lives in veil's own folder, ``$VEIL_HOME/resume/<hash of OUTDIR's path>.jsonl``
(0700), not in OUTDIR: an output folder holds only the outputs, so publishing it never
publishes file names or hashes of the originals. Records unused for 30 days are removed.

Temporary files of veil's own naming (``.NAME.XXXXXXXX.veil-tmp``, from
:func:`veil.imageio.atomic_write`) next to this run's outputs can only be leftovers of a
run that was killed mid-write; they are removed before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from veil.imageio import atomic_write
from veil.models.store import veil_home
from veil.pipeline.options import Options

#: Records of output folders not written to for this long are removed.
KEEP_SECONDS = 30 * 24 * 3600
#: ``tempfile.mkstemp``'s names: ``.`` + NAME + ``.`` + 8 characters + ``.veil-tmp``.
_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.veil-tmp$")


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def options_fingerprint(options: Options) -> str:
    """What decides an output besides its input: every option, the version, the licences."""
    from veil import __version__

    doc = {"veil": __version__, "options": options.to_json(), "licenses": os.environ.get("VEIL_LICENSES", "")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def remove_stale_temporaries(destinations: Iterable[Path]) -> int:
    """Delete ``.NAME.*.veil-tmp`` files beside these destinations (NAME one of theirs);
    returns how many were removed."""
    names: dict[Path, set[str]] = {}
    for dst in destinations:
        names.setdefault(dst.parent, set()).add(dst.name)
    removed = 0
    for folder, wanted in names.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            m = _TEMP.match(entry.name)
            if m and m.group("name") in wanted and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


@dataclass
class Manifest:
    """The finished outputs of earlier runs into one output folder."""

    outdir: Path
    fingerprint: str
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    _torn: bool = False  #: the file ends in a line cut short: start the next on a new line

    @staticmethod
    def folder() -> Path:
        return veil_home() / "resume"

    @property
    def path(self) -> Path:
        key = hashlib.sha256(str(self.outdir.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return self.folder() / f"{key}.jsonl"

    @classmethod
    def load(cls, outdir: Path, options: Options) -> Manifest:
        m = cls(Path(outdir), options_fingerprint(options))
        _prune(m.folder(), keep=m.path)
        try:
            text = m.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return m
        lines, m._torn = text.splitlines(), bool(text) and not text.endswith("\n")
        for line in lines:
            try:
                rec = json.loads(line)
                m.records[str(rec["output"])] = rec
            except (ValueError, KeyError, TypeError):  # a line cut short by a kill
                continue
        if len(lines) > 2 * len(m.records) + 16:  # mostly superseded lines: write it afresh
            m._rewrite()
        return m

    def _key(self, dst: Path) -> str:
        return Path(os.path.relpath(dst, self.outdir)).as_posix()

    def complete(self, src: Path, dst: Path) -> bool:
        """Whether ``dst`` is what veil wrote from ``src`` as it is now, with these options."""
        rec = self.records.get(self._key(dst))
        if rec is None or rec.get("options") != self.fingerprint:
            return False
        try:
            if dst.stat().st_size != rec.get("size"):  # cheap checks before any hashing
                return False
            return file_sha256(dst) == rec.get("output_sha256") and file_sha256(src) == rec.get("input_sha256")
        except OSError:
            return False

    def add(self, dst: Path, input_sha256: str, output_sha256: str) -> None:
        """Record a finished output (call once it is on disk)."""
        rec = {"output": self._key(dst), "input_sha256": input_sha256, "output_sha256": output_sha256,
               "size": dst.stat().st_size, "options": self.fingerprint}  # fmt: skip
        self.records[rec["output"]] = rec
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(("\n" if self._torn else "") + json.dumps(rec, sort_keys=True) + "\n")
            self._torn = False
            f.flush()
            os.fsync(f.fileno())

    def _rewrite(self) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records.values())
        try:
            atomic_write(self.path, text.encode("utf-8"))
            self._torn = False
        except OSError:
            pass


def _prune(folder: Path, keep: Path) -> None:
    """Forget output folders no run has written to for :data:`KEEP_SECONDS`."""
    cutoff = time.time() - KEEP_SECONDS
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.name.endswith(".jsonl") and entry.path != str(keep) and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
        except OSError:
            pass
