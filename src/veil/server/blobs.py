"""The blob store: the bytes of uploads and results, each with a time to live.

Blobs are keyed ``<job id>/<what>/<index>[/<attempt>]`` (:func:`blob_key`), so every
blob of a job can be dropped at once and a re-run of a task writes beside, never over,
the result of an earlier attempt. Two homes: :class:`MemoryBlobStore` (the embedded
mode: the API process's memory; a video's value is its encrypted spool file) and
:class:`veil.server.redis_store.RedisBlobStore` (the distributed mode).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol, runtime_checkable


def blob_key(job_id: str, what: str, idx: int | None = None, attempt: int | None = None) -> str:
    parts = [job_id, what] + [str(p) for p in (idx, attempt) if p is not None]
    return "/".join(parts)


def hold_ttl(ttl: float) -> float:
    """How long an upload or result may live while its job waits or runs: twice the
    job's TTL (and a minute), as its record; when the job ends its blobs get ``ttl``."""
    return 2 * float(ttl) + 60.0


def _job_of(key: str) -> str:
    return key.split("/", 1)[0]


@runtime_checkable
class BlobStore(Protocol):
    def put(self, key: str, value: Any, ttl: float) -> None:
        """Store ``value`` (bytes) under ``key`` for ``ttl`` seconds."""

    def get(self, key: str) -> Any | None:
        """The value, or ``None`` (never stored, expired or deleted)."""

    def take(self, key: str) -> Any | None:
        """Get and delete in one step (the caller holds the only reference)."""

    def delete(self, *keys: str) -> None:
        """Drop these blobs (missing ones are ignored)."""

    def delete_job(self, job_id: str) -> None:
        """Drop every blob of a job."""

    def expire_job(self, job_id: str, ttl: float) -> None:
        """Give every blob of a job ``ttl`` more seconds (when the job finishes)."""

    def held_bytes(self) -> int:
        """Bytes held now (the admission check's measure)."""


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (bytes, bytearray, memoryview)) else 0


def _discard(value: Any) -> None:
    shred = getattr(value, "shred", None)  # a video's spool file: overwritten and removed
    if callable(shred):
        shred()


class MemoryBlobStore:
    """Blobs in this process's memory; an expired blob is dropped when next touched or
    at :meth:`sweep`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[Any, float]] = {}
        self._held = 0

    def put(self, key: str, value: Any, ttl: float) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._held -= _size(old[0])
            self._items[key] = (value, time.time() + ttl)
            self._held += _size(value)
        if old is not None and old[0] is not value:
            _discard(old[0])

    def _pop(self, key: str) -> Any | None:
        item = self._items.pop(key, None)
        if item is None:
            return None
        self._held -= _size(item[0])
        return item[0]

    def get(self, key: str) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[1] > time.time():
                return item[0]
            value = self._pop(key)
        _discard(value)
        return None

    def take(self, key: str) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            value = self._pop(key)
        if item is not None and item[1] <= time.time():
            _discard(value)
            return None
        return value

    def delete(self, *keys: str) -> None:
        with self._lock:
            gone = [self._pop(k) for k in keys]
        for v in gone:
            _discard(v)

    def delete_job(self, job_id: str) -> None:
        with self._lock:
            keys = [k for k in self._items if _job_of(k) == job_id]
        self.delete(*keys)

    def expire_job(self, job_id: str, ttl: float) -> None:
        now = time.time()
        with self._lock:
            for k, (v, was) in list(self._items.items()):
                if _job_of(k) == job_id and was > now:  # an expired blob is not revived
                    self._items[k] = (v, now + ttl)

    def held_bytes(self) -> int:
        with self._lock:
            return self._held

    def sweep(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self._lock:
            keys = [k for k, (_, until) in self._items.items() if until <= now]
        self.delete(*keys)
        return len(keys)

    def clear(self) -> None:
        with self._lock:
            keys = list(self._items)
        self.delete(*keys)
