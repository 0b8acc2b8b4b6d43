"""Encrypted spool files: videos too large for memory, on disk but unreadable.

A video upload (up to gigabytes) and its result cannot live in memory like photos, so
they are written to ``<data dir>/spool/``, encrypted with AES-GCM under a key that
exists only in this process (made at start-up, never written anywhere). When the
process ends, by a clean stop or by ``kill -9``, the key is gone and so is every way
to read what is left; the next start-up removes those leftovers.

A :class:`SpoolFile` is a seekable, random-access binary file (``read``, ``write``,
``seek``, ``tell``), so the video core can read its input and write its output
straight through it. The plaintext is cut into fixed chunks of :data:`CHUNK` bytes,
each sealed on its own with a fresh random 96-bit nonce at every write and the file's
random id, the chunk index and the chunk's write count (kept in memory) as associated
data: chunks cannot be moved, swapped, rolled back to an earlier version or replayed
between files without the tag check failing, and a failed check raises
:class:`SpoolCorrupt`. The logical size is kept in memory, so a file cut
short on disk is noticed too. At most one chunk of plaintext is held in memory.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import struct
import threading
from array import array
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veil.errors import VeilError

log = logging.getLogger("veil.server.spool")

#: Plaintext bytes per sealed chunk.
CHUNK = 64 * 1024
NONCE = 12
TAG = 16
RECORD = NONCE + CHUNK + TAG
SUFFIX = ".spool"
_SHRED_BLOCK = 1024 * 1024


class SpoolCorrupt(VeilError):
    """A spool chunk failed its authentication check (changed, moved or cut short on disk)."""


class SpoolDir:
    """The spool directory of one server process and the key its files are sealed with.

    Creating it removes every spool file an earlier process left behind (after a crash
    or ``kill -9``): they were sealed with a key that died with that process.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self._lock = threading.Lock()
        self._open: set[SpoolFile] = set()
        self.removed_at_start = self.remove_leftovers()

    def remove_leftovers(self) -> int:
        """Delete every spool file not made by this process; returns how many."""
        with self._lock:
            mine = {f.path for f in self._open}
        n = 0
        for p in self.path.iterdir():
            if p in mine or not p.name.endswith(SUFFIX):
                continue
            try:
                p.unlink()
                n += 1
            except FileNotFoundError:
                pass
        if n:
            log.info("removed %d spool file(s) left by an earlier run (unreadable without its key)", n)
        return n

    def create(self) -> SpoolFile:
        """A new, empty spool file (``w+b``: read, write and seek)."""
        f = SpoolFile(self, self.path / f"{secrets.token_hex(16)}{SUFFIX}", self._aead)
        with self._lock:
            self._open.add(f)
        return f

    def _closed(self, f: SpoolFile) -> None:
        with self._lock:
            self._open.discard(f)

    @property
    def bytes_on_disk(self) -> int:
        """Plaintext bytes in live spool files (for the server's disk budget)."""
        with self._lock:
            return sum(f.size for f in self._open)

    def shred_all(self) -> None:
        with self._lock:
            files = list(self._open)
        for f in files:
            f.shred()


class SpoolFile(io.RawIOBase):
    """One encrypted, seekable spool file; see the module docstring for the format."""

    def __init__(self, owner: SpoolDir, path: Path, aead: AESGCM):
        super().__init__()
        self.path = path
        self._owner = owner
        self._aead = aead
        self._id = secrets.token_bytes(16)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        self._size = 0  # logical (plaintext) size; never read from the disk
        self._pos = 0
        self._lock = threading.RLock()
        # the one chunk of plaintext in memory; written back (with a new nonce) when dirty
        self._index = -1
        self._buf = bytearray()
        self._dirty = False
        self._shredded = False
        self._versions = array("Q")  # writes of each chunk so far

    # -- io.RawIOBase --------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    @property
    def size(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with self._lock:
            base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}.get(whence)
            if base is None:
                raise ValueError(f"invalid whence {whence}")
            pos = base + int(offset)
            if pos < 0:
                raise ValueError("negative seek position")
            self._pos = pos
            return pos

    def readinto(self, b) -> int:  # noqa: ANN001 - any writable buffer
        with self._lock:
            data = self.pread(self._pos, len(b))
            b[: len(data)] = data
            self._pos += len(data)
            return len(data)

    def read(self, size: int = -1) -> bytes:
        with self._lock:
            n = self._size - self._pos if size is None or size < 0 else size
            data = self.pread(self._pos, n)
            self._pos += len(data)
            return data

    def readall(self) -> bytes:
        return self.read(-1)

    def write(self, b) -> int:  # noqa: ANN001 - any bytes-like object
        with self._lock:
            n = self.pwrite(self._pos, b)
            self._pos += n
            return n

    def flush(self) -> None:
        with self._lock:
            if not self._shredded:
                self._store()

    def close(self) -> None:
        """Closing shreds: a spool file is never reopened."""
        self.shred()

    # -- positional access (shared by concurrent readers of a finished result) ----------
    def pread(self, offset: int, n: int) -> bytes:
        """Up to ``n`` plaintext bytes at ``offset`` (fewer at the end); the position stays."""
        with self._lock:
            self._check_open()
            end = min(self._size, offset + max(0, n))
            out = bytearray()
            while offset < end:
                idx, at = divmod(offset, CHUNK)
                self._load(idx)
                take = min(end - offset, len(self._buf) - at)
                out += self._buf[at : at + take]
                offset += take
            return bytes(out)

    def pwrite(self, offset: int, b) -> int:  # noqa: ANN001
        """Write ``b`` at ``offset`` (a gap past the end reads back as zeros)."""
        data = memoryview(b).cast("B")
        with self._lock:
            self._check_open()
            if offset > self._size:  # fill the gap, so every chunk below the size exists
                gap = offset - self._size
                while gap:
                    step = min(gap, CHUNK)
                    self.pwrite(self._size, bytes(step))
                    gap -= step
            done = 0
            while done < len(data):
                idx, at = divmod(offset + done, CHUNK)
                self._load(idx)
                take = min(len(data) - done, CHUNK - at)
                if at > len(self._buf):
                    self._buf += bytes(at - len(self._buf))
                self._buf[at : at + take] = data[done : done + take]
                self._dirty = True
                done += take
                self._size = max(self._size, offset + done)
            return done

    # -- chunks ----------------------------------------------------------------------------
    def _aad(self, idx: int) -> bytes:
        return self._id + struct.pack(">QQ", idx, self._versions[idx])

    def _load(self, idx: int) -> None:
        if idx == self._index:
            return
        self._store()
        self._index, self._dirty = idx, False
        start = idx * CHUNK
        if start >= self._size:
            self._buf = bytearray()
            return
        want = min(CHUNK, self._size - start)
        record = os.pread(self._fd, NONCE + want + TAG, idx * RECORD)
        if len(record) != NONCE + want + TAG:
            self._index = -1
            raise SpoolCorrupt(f"spool chunk {idx} is cut short on disk")
        try:
            self._buf = bytearray(self._aead.decrypt(record[:NONCE], record[NONCE:], self._aad(idx)))
        except InvalidTag:
            self._index, self._buf = -1, bytearray()
            raise SpoolCorrupt(f"spool chunk {idx} failed its authentication check") from None

    def _store(self) -> None:
        if not self._dirty or self._index < 0:
            return
        while len(self._versions) <= self._index:
            self._versions.append(0)
        self._versions[self._index] += 1
        nonce = secrets.token_bytes(NONCE)
        sealed = self._aead.encrypt(nonce, bytes(self._buf), self._aad(self._index))
        os.pwrite(self._fd, nonce + sealed, self._index * RECORD)
        self._dirty = False

    def _check_open(self) -> None:
        if self._shredded:
            raise ValueError("I/O on a shredded spool file")

    # -- end of life -------------------------------------------------------------------------
    def shred(self) -> None:
        """Overwrite the file on disk, unlink it and forget the plaintext chunk. Idempotent."""
        with self._lock:
            if self._shredded:
                return
            self._shredded = True
            self._buf, self._index, self._dirty = bytearray(), -1, False
            try:
                length = os.fstat(self._fd).st_size
                zeros = bytes(min(length, _SHRED_BLOCK))
                at = 0
                while at < length:
                    at += os.pwrite(self._fd, zeros[: min(_SHRED_BLOCK, length - at)], at)
                os.fsync(self._fd)
            except OSError:
                log.warning("could not overwrite a spool file before removing it")
            finally:
                os.close(self._fd)
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                self._size = self._pos = 0
                self._owner._closed(self)
        super().close()

    @property
    def shredded(self) -> bool:
        return self._shredded

    def __del__(self) -> None:  # a forgotten spool never stays on disk
        try:
            self.shred()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
