"""The distributed mode's Redis parts: job records (:class:`RedisJobRepository`) and
blobs (:class:`RedisBlobStore`), each key with a time to live.

Redis holds everything in memory; the privacy promise (no upload or result on disk)
holds when Redis runs without persistence (``--save '' --appendonly no``, see the
README). Records are JSON strings updated with optimistic transactions (WATCH/MULTI),
so claims and settlements from many workers are atomic.
"""

from __future__ import annotations

import io
import json
import secrets
import time
from typing import Any, Callable

from veil.server.blobs import hold_ttl
from veil.server.errors import Busy, TooManyJobs, Unavailable
from veil.server.records import ACTIVE, ImageRecord, JobRecord

PREFIX = "veil:"
#: a record outlives its job's expiry by this much, so a late reader sees "expired", not a gap
_GRACE = 60.0


def connect(url: str, *, timeout: float = 3.0) -> Any:
    """A Redis client for ``redis://``/``rediss://`` URLs (password in the URL) whose
    calls fail within seconds when Redis is down or frozen, instead of hanging (one retry)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=min(3.0, timeout),
                                health_check_interval=15, retry=Retry(NoBackoff(), 1))  # fmt: skip


def shared_secret(r: Any, name: str) -> str:
    """A secret shared by every API node and worker of one Redis (created once)."""
    key = f"{PREFIX}secret:{name}"
    r.set(key, "whsec_" + secrets.token_urlsafe(32), nx=True)
    value = r.get(key)
    return value.decode() if isinstance(value, bytes) else str(value)


def _ms(seconds: float) -> int:
    return max(1000, int(seconds * 1000))


class RedisJobRepository:
    """Job records in Redis: ``veil:job:<id>`` (JSON), ``veil:key-jobs:<key id>`` (set)."""

    def __init__(self, r: Any):
        self.r = r

    @staticmethod
    def _key(job_id: str) -> str:
        return f"{PREFIX}job:{job_id}"

    def _load(self, raw: Any) -> JobRecord | None:
        return JobRecord.from_json(json.loads(raw)) if raw else None

    def _update(self, job_id: str, change: Callable[[JobRecord], Any]) -> tuple[bool, Any]:
        """Apply ``change`` to the record atomically; (found, what ``change`` returned)."""
        key = self._key(job_id)
        out: list[Any] = [False, None]

        def txn(pipe: Any) -> None:
            job = self._load(pipe.get(key))
            if job is None:
                out[:] = [False, None]
                return
            result = change(job)
            pipe.multi()
            pipe.set(key, json.dumps(job.to_json()), keepttl=True)
            out[:] = [True, result]

        self.r.transaction(txn, key)
        return out[0], out[1]

    def create(self, job: JobRecord, max_active: int | None = None) -> None:
        hold = _ms(hold_ttl(job.expires_at - job.created))  # refreshed at each claim
        if not job.key_id:
            self.r.set(self._key(job.id), json.dumps(job.to_json()), px=hold)
            return
        members_key = f"{PREFIX}key-jobs:{job.key_id}"

        def txn(pipe: Any) -> None:  # WATCHes the key's set: two creates cannot both take the last slot
            if max_active:
                active = self._active(pipe, job.key_id)
                if active >= max_active:
                    raise TooManyJobs(f"this key already has {active} unfinished job(s); the limit is {max_active}",
                                      retry_after=5)  # fmt: skip
            pipe.multi()
            pipe.set(self._key(job.id), json.dumps(job.to_json()), px=hold)
            pipe.sadd(members_key, job.id)
            pipe.pexpire(members_key, hold)

        self.r.transaction(txn, members_key)

    def get(self, job_id: str) -> JobRecord | None:
        return self._load(self.r.get(self._key(job_id)))

    def _active(self, r: Any, key_id: str) -> int:
        members = [m.decode() if isinstance(m, bytes) else m for m in r.smembers(f"{PREFIX}key-jobs:{key_id}")]
        raws = r.mget([self._key(m) for m in members]) if members else []
        return sum(1 for raw in raws if (job := self._load(raw)) is not None and job.status in ACTIVE)

    def active_count(self, key_id: str) -> int:
        return self._active(self.r, key_id)

    def claim(self, job_id: str, idx: int) -> ImageRecord | None:
        def change(job: JobRecord) -> tuple[ImageRecord, float] | None:
            if not 0 <= idx < len(job.images) or job.images[idx].status not in ACTIVE:
                return None
            im = job.images[idx]
            im.status, im.attempts = "processing", im.attempts + 1
            if job.status == "queued":
                job.status, job.started = "processing", job.started or time.time()
            return ImageRecord.from_json(im.to_json()), job.expires_at - job.created

        _, claimed = self._update(job_id, change)
        if claimed is None:
            return None
        im, ttl = claimed
        self.r.pexpire(self._key(job_id), _ms(hold_ttl(ttl)))  # a running job's record lives on
        return im

    def set_progress(self, job_id: str, idx: int, progress: dict[str, Any]) -> None:
        def change(job: JobRecord) -> None:
            if 0 <= idx < len(job.images):
                job.images[idx].progress = progress

        self._update(job_id, change)

    def settle(self, job_id: str, idx: int, status: str, **values: Any) -> int | None:
        def change(job: JobRecord) -> int | None:
            if not 0 <= idx < len(job.images) or job.images[idx].status not in ACTIVE:
                return None
            im = job.images[idx]
            im.status = status
            for k, v in values.items():
                setattr(im, k, v)
            return sum(1 for i in job.images if i.status in ACTIVE)

        return self._update(job_id, change)[1]

    def delete_image(self, job_id: str, idx: int) -> tuple[bool, int | None]:
        def change(job: JobRecord) -> tuple[bool, int | None]:
            if not 0 <= idx < len(job.images) or job.images[idx].status == "deleted":
                return False, None
            im = job.images[idx]
            was_active = im.status in ACTIVE
            im.status, im.detections, im.sha256, im.result_key = "deleted", None, None, None
            return True, (sum(1 for i in job.images if i.status in ACTIVE) if was_active else None)

        found, result = self._update(job_id, change)
        return result if found else (False, None)

    def finish(self, job_id: str, status: str, error: str | None, finished: float, expires_at: float) -> bool:
        def change(job: JobRecord) -> bool:
            if job.status not in ACTIVE:
                return False
            job.status, job.error, job.finished, job.expires_at = status, error, finished, expires_at
            return True

        found, won = self._update(job_id, change)
        if found and won:
            self.r.pexpire(self._key(job_id), _ms(expires_at - time.time() + _GRACE))
        return bool(found and won)

    def set_webhook(self, job_id: str, status: str, attempts: int | None = None) -> None:
        def change(job: JobRecord) -> None:
            job.webhook_status = status
            if attempts is not None:
                job.webhook_attempts = attempts

        self._update(job_id, change)

    def delete(self, job_id: str) -> None:
        self.r.delete(self._key(job_id))

    def expired(self, now: float) -> list[str]:
        return []  # Redis drops expired records itself

    def heartbeat(self, now: float) -> list[JobRecord]:
        return []  # shared: no job dies with an API node


#: a blob that is a stream (a video) is stored in pieces of this size
CHUNK = 4 * 1024 * 1024
_CHUNKED = b"veil-chunked:"


class ChunkedBlob(io.RawIOBase):
    """A video held in Redis pieces, read like a file (PyAV seeks in it) or by position
    (the ranged download): one piece is fetched at a time, never the whole video."""

    def __init__(self, r: Any, key: str, size: int, chunks: int):
        super().__init__()
        self.r, self.key, self.size, self.chunks = r, key, int(size), int(chunks)
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None

    def _piece(self, i: int) -> bytes:
        if self._cached is None or self._cached[0] != i:
            data = self.r.get(f"{self.key}#{i}")
            if data is None:
                raise OSError("the video is no longer held (it expired or was deleted)")
            self._cached = (i, data)
        return self._cached[1]

    def pread(self, offset: int, n: int) -> bytes:
        out = bytearray()
        end = min(self.size, offset + n)
        while offset < end:
            i, at = divmod(offset, CHUNK)
            piece = self._piece(i)[at:at + (end - offset)]
            if not piece:
                break
            out += piece
            offset += len(piece)
        return bytes(out)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b: Any) -> int:
        data = self.pread(self._pos, len(b))
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)


class RedisBlobStore:
    """Blobs in Redis: ``veil:blob:<job>/<what>/<i>...`` with a TTL, indexed per job.
    Bytes are one value; a stream (a video's spool file: anything with ``size`` and
    ``pread``) is copied in pieces of :data:`CHUNK` and the local file shredded."""

    def __init__(self, r: Any):
        self.r = r

    @staticmethod
    def _key(key: str) -> str:
        return f"{PREFIX}blob:{key}"

    @staticmethod
    def _index(job_id: str) -> str:
        return f"{PREFIX}blobs:{job_id}"

    def put(self, key: str, value: Any, ttl: float) -> None:
        import redis

        try:
            self._put(key, value, ttl)
        except redis.exceptions.OutOfMemoryError:
            # never re-raise redis's own message: it quotes the command, image bytes included
            raise Busy("the job store (Redis) is full right now; retry later", retry_after=30) from None
        except redis.exceptions.RedisError as exc:
            raise Unavailable(f"the job store (Redis) refused the upload ({type(exc).__name__}); retry later",
                              retry_after=5) from None

    def _put(self, key: str, value: Any, ttl: float) -> None:
        job = key.split("/", 1)[0]
        rkey = self._key(key)
        if isinstance(value, (bytes, bytearray, memoryview)):
            head = bytes(value)
        elif hasattr(value, "pread") and hasattr(value, "size"):
            size = int(value.size)
            chunks = (size + CHUNK - 1) // CHUNK
            for i in range(chunks):  # one piece in memory at a time
                self.r.set(f"{rkey}#{i}", value.pread(i * CHUNK, CHUNK), px=_ms(ttl))
            head = _CHUNKED + json.dumps({"size": size, "chunks": chunks}).encode()
            shred = getattr(value, "shred", None)
            if callable(shred):  # the local (encrypted) copy is not needed any more
                shred()
        else:
            raise TypeError("the Redis blob store holds bytes or spool files")
        p = self.r.pipeline()
        p.set(rkey, head, px=_ms(ttl))
        p.sadd(self._index(job), key)
        p.pexpire(self._index(job), _ms(ttl + _GRACE))
        p.execute()

    def _open(self, key: str, head: Any) -> Any:
        if head is not None and head.startswith(_CHUNKED):
            meta = json.loads(head[len(_CHUNKED):])
            return ChunkedBlob(self.r, self._key(key), meta["size"], meta["chunks"])
        return head

    def _pieces(self, key: str, head: Any) -> list[str]:
        if head is not None and head.startswith(_CHUNKED):
            n = json.loads(head[len(_CHUNKED):])["chunks"]
            return [f"{self._key(key)}#{i}" for i in range(n)]
        return []

    def get(self, key: str) -> Any | None:
        return self._open(key, self.r.get(self._key(key)))

    def take(self, key: str) -> Any | None:
        return self._open(key, self.r.getdel(self._key(key)))

    def delete(self, *keys: str) -> None:
        if not keys:
            return
        heads = self.r.mget([self._key(k) for k in keys])
        doomed = [self._key(k) for k in keys]
        for k, head in zip(keys, heads):
            doomed += self._pieces(k, head)
        self.r.delete(*doomed)

    def _members(self, job_id: str) -> list[str]:
        return [m.decode() if isinstance(m, bytes) else m for m in self.r.smembers(self._index(job_id))]

    def delete_job(self, job_id: str) -> None:
        members = self._members(job_id)
        if members:
            self.delete(*members)
        self.r.delete(self._index(job_id))

    def expire_job(self, job_id: str, ttl: float) -> None:
        members = self._members(job_id)
        heads = self.r.mget([self._key(m) for m in members]) if members else []
        p = self.r.pipeline()
        for m, head in zip(members, heads):
            for k in [self._key(m)] + self._pieces(m, head):
                p.pexpire(k, _ms(ttl))
        p.pexpire(self._index(job_id), _ms(ttl + _GRACE))
        p.execute()

    def held_bytes(self) -> int:
        return int(self.r.info("memory").get("used_memory", 0))


def describe(url: str) -> str:
    """``host:port/db`` of a Redis URL, never its password."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or '/0'}"
    except ValueError:
        return "(an unreadable Redis URL)"


def check_reachable(url: str) -> None:
    """Ping Redis once; a :class:`~veil.errors.VeilError` naming it (without the password) if it fails."""
    from veil.errors import VeilError

    try:
        import redis
    except ImportError:
        raise VeilError('the distributed mode needs the "distributed" extra: pip install "veil[distributed]"') from None
    try:
        connect(url).ping()
    except ValueError as exc:
        raise VeilError(f"not a Redis URL: {describe(url)} ({type(exc).__name__})") from None
    except redis.exceptions.AuthenticationError:
        raise VeilError(f"Redis at {describe(url)} refused the password") from None
    except redis.exceptions.RedisError as exc:
        raise VeilError(f"cannot reach Redis at {describe(url)}: {type(exc).__name__}") from None


def persistence_warning(url: str) -> str | None:
    """A warning when this Redis writes its memory to disk (RDB snapshots or AOF), where
    uploads and results would then land; ``None`` when it does not, or cannot tell."""
    try:
        r = connect(url)
        save = r.config_get("save").get("save", "")
        aof = r.config_get("appendonly").get("appendonly", "no")
    except Exception:  # noqa: BLE001 - CONFIG may be renamed or forbidden (managed Redis)
        return None
    if save or aof == "yes":
        return (f"Redis at {describe(url)} persists to disk (save={save!r}, appendonly={aof}): uploads and results "
                "would reach its disk; run it with --save '' --appendonly no")
    return None
