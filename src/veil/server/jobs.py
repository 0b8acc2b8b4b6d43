"""Jobs: metadata in SQLite, image bytes only in memory, videos only encrypted on disk.

An original lives in memory from upload until its image is processed, then it is
dropped; results live in memory until downloaded (with ``delete_after_download``),
deleted, or expired (TTL after the job ends), whichever comes first. Nothing of an
upload — bytes, file names, metadata — is written to disk in the clear. A video is too
large for memory: it arrives in an encrypted spool file (:mod:`veil.server.spool`), its
result is written to another, and each is shredded as soon as it is no longer needed
(the input once processed, the result when the photo's would be dropped).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import secrets
import threading
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from veil.errors import ImageError, ModelError, OptionsError, VeilError
from veil.pipeline.options import Options
from veil.server.audit import AuditLog, sum_counts
from veil.server.config import ServerConfig
from veil.server.keys import ApiKey, KeyManager, add_usage, iso, quota_left, seconds_to_utc_midnight, utc_day
from veil.server.problems import Problem
from veil.server.queue import JobQueue, QueueFull
from veil.server.store import Store, dumps, loads
from veil.server.tokens import DownloadTokens
from veil.server.uploads import EXTENSIONS, safe_stem
from veil.server.webhooks import WebhookSender, server_secret

log = logging.getLogger("veil.server.jobs")

API = "/api/v1"
ACTIVE = ("queued", "processing")


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key, or nobody (open local mode)."""

    key: ApiKey | None = None

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key else None


def owns(row: dict[str, Any], principal: Principal) -> bool:
    """A job belongs to the key that created it; one created without a key (open local
    mode, ``--no-require-keys``) belongs to "anonymous" only, never to a key."""
    return row["key_id"] == principal.key_id


@dataclass
class Upload:
    data: bytes
    filename: str | None = None
    #: a video: its bytes are in this encrypted spool file (``data`` is empty)
    spool: Any = None


@dataclass
class _Slot:
    original: bytes | None
    stem: str | None
    result: bytes | None = None
    content_type: str | None = None
    format: str | None = None
    #: hidden regions (target + box) kept in memory with the result, for the web page's
    #: manual corrections; they expire and are deleted with it
    regions: list[dict[str, Any]] | None = None
    deleted: bool = False
    #: a video: input and result are encrypted spool files, never bytes in memory
    video: bool = False
    spool_in: Any = None
    spool_out: Any = None
    #: ``{"stage", "frames_done", "frames_total"}`` while (and after) it is processed
    progress: dict[str, Any] | None = None
    video_report: dict[str, Any] | None = None

    def shred(self) -> None:
        """Shred the video's spool files, if any (idempotent)."""
        for f in (self.spool_in, self.spool_out):
            if f is not None:
                f.shred()
        self.spool_in = self.spool_out = None


@dataclass
class _JobState:
    id: str
    key: ApiKey | None
    options: Options
    slots: list[_Slot]
    base_url: str
    delete_after_download: bool
    callback_url: str | None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def held_bytes(self) -> int:
        return sum(len(s.original or b"") + len(s.result or b"") for s in self.slots)


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
        self._accepts_limits: bool | None = None
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
        fn = self.fn
        kwargs: dict[str, Any] = {}
        if regions is not None:
            kwargs["regions"] = regions
        if self._accepts_limits is None:
            try:
                self._accepts_limits = "limits" in inspect.signature(fn).parameters
            except (TypeError, ValueError):
                self._accepts_limits = False
        if self._accepts_limits:
            kwargs["limits"] = self.config.limits.image_limits()
        return fn(data, options, **kwargs)


class JobManager:
    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        keys: KeyManager,
        audit: AuditLog,
        queue: JobQueue,
        webhooks: WebhookSender,
        pipeline: Pipeline,
        spool: Any = None,
    ):
        self.config = config
        self.store = store
        self.keys = keys
        self.audit = audit
        self.queue = queue
        self.webhooks = webhooks
        self.pipeline = pipeline
        #: the :class:`~veil.server.spool.SpoolDir` of video uploads and results
        self.spool = spool
        self.tokens = DownloadTokens()
        self._jobs: dict[str, _JobState] = {}
        self._lock = threading.Lock()
        self._held = 0  # bytes of originals + results in memory
        self._sync_slots = threading.BoundedSemaphore(config.effective_sync_concurrency)
        self._sweeper: threading.Thread | None = None
        self._stop = threading.Event()

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        # Results never outlive the process: rows from an earlier run point at nothing.
        self._refund_lost_jobs()
        self.store.execute("DELETE FROM jobs")
        self.queue.start(self.process)
        self.webhooks.start()
        self._stop.clear()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="veil-sweeper", daemon=True)
        self._sweeper.start()

    def _refund_lost_jobs(self) -> None:
        """Give back the quota of jobs an earlier process never finished (killed or
        stopped): they are lost (404 from now on), so they must not count against a key."""
        with self.store.transaction() as conn:
            lost = conn.execute(
                "SELECT key_id, created, n_images FROM jobs WHERE key_id IS NOT NULL AND status IN ('queued', 'processing')"
            ).fetchall()
            for key_id, created, n in lost:
                conn.execute(
                    "UPDATE usage SET images = MAX(0, images - ?) WHERE key_id = ? AND day = ?",
                    (int(n), key_id, utc_day(created)),
                )
        if lost:
            log.info("%d unfinished job(s) from an earlier run are lost; their quota is given back", len(lost))

    def stop(self) -> None:
        self._stop.set()
        self.queue.stop()
        self.webhooks.stop()
        if self._sweeper is not None:
            self._sweeper.join(5)
        with self._lock:
            jobs = list(self._jobs.values())
            self._jobs.clear()
            self._held = 0
        for st in jobs:
            for s in st.slots:
                s.shred()
        if self.spool is not None:
            self.spool.shred_all()

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.config.effective_sweep_interval):
            try:
                self.sweep()
            except Exception:  # noqa: BLE001
                log.exception("sweep failed")

    def sweep(self, now: float | None = None) -> int:
        """Forget every finished job past its ``expires_at``; returns how many."""
        now = time.time() if now is None else now
        rows = self.store.query(
            "SELECT id FROM jobs WHERE expires_at <= ? AND status NOT IN ('queued', 'processing')", (now,)
        )
        for r in rows:
            self._forget(r["id"])
        return len(rows)

    def _require_pipeline(self) -> None:
        if not self.pipeline.available():
            raise Problem(503, "the anonymization pipeline is not installed on this server", slug="pipeline-unavailable",
                          headers={"Retry-After": "60"})

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return self._held

    def _adjust_held(self, delta: int) -> None:
        with self._lock:
            self._held += delta

    # -- create ----------------------------------------------------------------------------
    def _check_spool_room(self, uploads: Sequence[Upload]) -> None:
        """503 when the videos' results would not fit the disk budget of spool files."""
        incoming = sum(u.spool.size for u in uploads if u.spool is not None)
        if not incoming or self.spool is None:
            return
        # the uploads are on disk already; their results will be about as large
        if self.spool.bytes_on_disk + incoming > self.config.limits.max_spool_bytes:
            raise Problem(
                503,
                "the server holds too many videos right now; retry later",
                slug="server-busy",
                headers={"Retry-After": "60"},
            )

    def create(
        self,
        uploads: Sequence[Upload],
        options: Options,
        principal: Principal,
        *,
        callback_url: str | None,
        delete_after_download: bool,
        base_url: str,
    ) -> dict[str, Any]:
        self._require_pipeline()
        n = len(uploads)
        incoming = sum(len(u.data) for u in uploads)
        self._check_spool_room(uploads)
        # Results are about as large as originals: reserve room for both.
        if self.held_bytes + 2 * incoming > self.config.limits.max_held_bytes:
            raise Problem(
                503,
                "the server holds too many images in memory right now; retry later",
                slug="server-busy",
                headers={"Retry-After": str(self.queue.retry_after() if hasattr(self.queue, "retry_after") else 5)},
            )
        job_id = "j_" + secrets.token_urlsafe(16)
        now = time.time()
        key = principal.key
        with self.store.transaction() as conn:
            if key is not None:
                limit = key.max_concurrent or self.config.limits.max_concurrent_jobs_per_key
                active = conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE key_id = ? AND status IN ('queued', 'processing')", (key.id,)
                ).fetchone()[0]
                if active >= limit:
                    raise Problem(
                        429,
                        f"this key already has {active} unfinished job(s); the limit is {limit}",
                        slug="too-many-jobs",
                        headers={"Retry-After": "5"},
                    )
                left = quota_left(conn, key)
                if left is not None and n > left:
                    raise Problem(
                        429,
                        f"daily quota spent: {left} of {key.quota_per_day} images left today, {n} submitted",
                        slug="quota-exceeded",
                        headers={"Retry-After": str(seconds_to_utc_midnight())},
                    )
                add_usage(conn, key.id, n)
            conn.execute(
                "INSERT INTO jobs (id, key_id, status, created, expires_at, n_images, options, callback_url, "
                "delete_after_download) VALUES (?,?,?,?,?,?,?,?,?)",
                (job_id, key.id if key else None, "queued", now, now + self.config.ttl, n,
                 dumps(options.to_json()), callback_url, int(delete_after_download)),
            )
            conn.executemany(
                "INSERT INTO images (job_id, idx, status) VALUES (?,?,?)", [(job_id, i, "queued") for i in range(n)]
            )
        state = _JobState(
            id=job_id,
            key=key,
            options=options,
            slots=[
                _Slot(None, safe_stem(u.filename), video=True, spool_in=u.spool)
                if u.spool is not None
                else _Slot(u.data, safe_stem(u.filename))
                for u in uploads
            ],
            base_url=base_url.rstrip("/"),
            delete_after_download=delete_after_download,
            callback_url=callback_url,
        )
        with self._lock:
            self._jobs[job_id] = state
            self._held += incoming
        try:
            self.queue.submit(job_id)
        except QueueFull as exc:
            self._forget(job_id)
            if key is not None:  # give the reserved quota back
                with self.store.transaction() as conn:
                    add_usage(conn, key.id, -n)
            raise Problem(
                503,
                "the job queue is full; retry later",
                slug="queue-full",
                headers={"Retry-After": str(exc.retry_after)},
            ) from None
        return self.status(job_id, principal)

    # -- processing (worker threads) ---------------------------------------------------------
    def process(self, job_id: str) -> None:
        with self._lock:
            state = self._jobs.get(job_id)
        if state is None:
            return
        self.store.execute(
            "UPDATE jobs SET status = 'processing', started = ? WHERE id = ? AND status = 'queued'", (time.time(), job_id)
        )
        for idx, slot in enumerate(state.slots):
            if self.queue.is_cancelled(job_id) or not self._alive(job_id):
                return
            if not self._process_image(state, idx, slot):
                return
        self._finish(state)

    def _process_image(self, state: _JobState, idx: int, slot: _Slot) -> bool:
        """Run one image; its original is unreachable once this returns. ``False``: job gone."""
        job_id = state.id
        if slot.video:
            from veil.server.videojobs import process_video

            return process_video(self, state, idx, slot)
        with state.lock:
            data, slot.original = slot.original, None  # the worker now owns the only reference
        if data is None:  # deleted while queued
            return True
        size = len(data)
        self.store.execute(
            "UPDATE images SET status = 'processing' WHERE job_id = ? AND idx = ? AND status = 'queued'", (job_id, idx)
        )
        try:
            result = self.pipeline(data, state.options)
        except (ImageError, OptionsError, ModelError, VeilError) as exc:
            self._image_failed(job_id, idx, str(exc), size)
            return True
        except Exception as exc:  # noqa: BLE001 - a bug must not take the worker down
            log.exception("job %s image %d: pipeline crashed", job_id, idx)
            self._image_failed(job_id, idx, f"internal error ({type(exc).__name__})", size)
            return True
        finally:
            del data
        out, ctype, fmt = bytes(result.data), result.content_type, result.format
        counts = detection_counts(result.report)
        regions = hidden_regions(result.report)
        del result
        digest = hashlib.sha256(out).hexdigest()
        with state.lock:  # serialised with _forget/_drop_image, so the byte count stays exact
            if not self._alive(job_id):
                self._adjust_held(-size)
                return False
            if slot.deleted:  # deleted while it was being processed
                self._adjust_held(-size)
                return True
            slot.result, slot.content_type, slot.format, slot.regions = out, ctype, fmt, regions
            self._adjust_held(len(out) - size)
        self.store.execute(
            "UPDATE images SET status = 'done', detections = ?, content_type = ?, format = ?, size = ?, sha256 = ? "
            "WHERE job_id = ? AND idx = ? AND status != 'deleted'",
            (dumps(counts), ctype, fmt, len(out), digest, job_id, idx),
        )
        return True

    def _alive(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._jobs

    def _image_failed(self, job_id: str, idx: int, message: str, size: int) -> None:
        self._adjust_held(-size)
        self.store.execute(
            "UPDATE images SET status = 'failed', error = ? WHERE job_id = ? AND idx = ? AND status != 'deleted'",
            (message, job_id, idx),
        )

    def _finish(self, state: _JobState) -> None:
        job_id = state.id
        images = self.store.query("SELECT * FROM images WHERE job_id = ? ORDER BY idx", (job_id,))
        done = [r for r in images if r["status"] == "done"]
        failed = [r for r in images if r["status"] == "failed"]
        status = "done" if done or not failed else "failed"
        now = time.time()
        error = None
        if status == "failed":
            error = failed[0]["error"] if len({r["error"] for r in failed}) == 1 else "every image failed"
        if not self.store.execute(
            "UPDATE jobs SET status = ?, finished = ?, expires_at = ?, error = ? WHERE id = ?",
            (status, now, now + self.config.ttl, error, job_id),
        ):
            return  # deleted meanwhile
        counts = sum_counts(loads(r["detections"], {}) for r in done)
        self.audit.record(
            "job",
            key_id=state.key.id if state.key else None,
            job_id=job_id,
            status=status,
            image_count=len(images),
            options=state.options.to_json(),
            detections=counts,
            outputs=[r["sha256"] for r in done],
        )
        if state.callback_url:
            payload = {
                "event": f"job.{status}",
                "job": {
                    "id": job_id,
                    "status": status,
                    "images": len(images),
                    "done": len(done),
                    "failed": len(failed),
                    "detections": counts,
                    "finished_at": iso(now),
                    "expires_at": iso(now + self.config.ttl),
                },
                "links": self._links(job_id, len(images), base=state.base_url),
            }
            secret = state.key.secret if state.key else server_secret(self.config.data_dir)
            self.store.execute("UPDATE jobs SET webhook_status = 'pending' WHERE id = ?", (job_id,))
            self.webhooks.send(state.callback_url, f"job.{status}", payload, secret, job_id=job_id)

    def webhook_result(self, job_id: str, status: str, attempts: int) -> None:
        self.store.execute(
            "UPDATE jobs SET webhook_status = ?, webhook_attempts = ? WHERE id = ?", (status, attempts, job_id)
        )

    # -- reading -----------------------------------------------------------------------------
    def _row(self, job_id: str, principal: Principal) -> dict[str, Any]:
        row = self.store.one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None or not owns(row, principal):
            raise Problem(404, f"no job {job_id!r} (it may have expired or been deleted)", slug="not-found")
        if row["status"] not in ACTIVE and row["expires_at"] <= time.time():
            self._forget(job_id)
            raise Problem(404, f"no job {job_id!r} (it has expired)", slug="not-found")
        return row

    def _links(self, job_id: str, n: int, base: str = "") -> dict[str, Any]:
        root = f"{base}{API}/jobs/{job_id}"
        return {"self": root, "archive": f"{root}/archive", "images": [f"{root}/images/{i}" for i in range(n)]}

    def status(self, job_id: str, principal: Principal) -> dict[str, Any]:
        row = self._row(job_id, principal)
        images = self.store.query("SELECT * FROM images WHERE job_id = ? ORDER BY idx", (job_id,))
        with self._lock:
            state = self._jobs.get(job_id)
        out_images = []
        for r in images:
            idx = r["idx"]
            entry: dict[str, Any] = {
                "index": idx,
                "status": r["status"],
                "detections": loads(r["detections"]),
                "error": r["error"],
            }
            if r["status"] == "done":
                entry.update(
                    content_type=r["content_type"],
                    format=r["format"],
                    size=r["size"],
                    sha256=r["sha256"],
                    name=self._entry_name(idx, r["format"], None),
                    url=f"{API}/jobs/{job_id}/images/{idx}",
                    regions=(state.slots[idx].regions if state is not None and idx < len(state.slots) else None) or [],
                )
            slot = state.slots[idx] if state is not None and idx < len(state.slots) else None
            entry["kind"] = "video" if slot is not None and slot.video else "image"
            if slot is not None and slot.video:
                entry["progress"] = slot.progress
                entry["video"] = slot.video_report
            out_images.append(entry)
        body: dict[str, Any] = {
            "id": job_id,
            "status": row["status"],
            "created_at": iso(row["created"]),
            "started_at": iso(row["started"]),
            "finished_at": iso(row["finished"]),
            "expires_at": iso(row["expires_at"]),
            "image_count": row["n_images"],
            "delete_after_download": bool(row["delete_after_download"]),
            "error": row["error"],
            "options": loads(row["options"]),
            "detections": sum_counts(i["detections"] for i in out_images if i["status"] == "done"),
            "images": out_images,
            "links": self._links(job_id, row["n_images"]),
        }
        if row["callback_url"]:
            body["webhook"] = {"status": row["webhook_status"] or "waiting", "attempts": row["webhook_attempts"]}
        return body

    @staticmethod
    def _entry_name(idx: int, fmt: str | None, stem: str | None) -> str:
        ext = EXTENSIONS.get(fmt or "", fmt or "bin")
        return f"{idx + 1:04d}_{stem}.{ext}" if stem else f"{idx + 1:04d}.{ext}"

    def image(self, job_id: str, n: int, principal: Principal) -> tuple[Any, str, str]:
        """``(bytes or spool file, content_type, archive_name)`` of one finished image or video."""
        self._row(job_id, principal)
        img = self.store.one("SELECT * FROM images WHERE job_id = ? AND idx = ?", (job_id, n))
        if img is None or img["status"] == "deleted":
            raise Problem(404, f"job {job_id!r} has no image {n}", slug="not-found")
        if img["status"] == "failed":
            raise Problem(409, f"image {n} failed: {img['error']}", slug="image-failed")
        if img["status"] != "done":
            raise Problem(409, f"image {n} is still {img['status']}", slug="not-ready", headers={"Retry-After": "1"})
        with self._lock:
            state = self._jobs.get(job_id)
        slot = state.slots[n] if state else None
        result = None if slot is None else (slot.spool_out if slot.video else slot.result)
        if slot is None or result is None:
            raise Problem(404, f"job {job_id!r} has no image {n}", slug="not-found")
        return result, slot.content_type or "application/octet-stream", self._entry_name(n, slot.format, None)

    def download(self, job_id: str, n: int, principal: Principal) -> tuple[Any, str, str, str | None]:
        """:meth:`image` plus the result's SHA-256 (its ETag, for ``If-Range``)."""
        data, ctype, name = self.image(job_id, n, principal)
        row = self.store.one("SELECT sha256 FROM images WHERE job_id = ? AND idx = ?", (job_id, n))
        return data, ctype, name, row["sha256"] if row else None

    def link(self, job_id: str, n: int, principal: Principal) -> dict[str, Any]:
        """A short-lived URL that downloads result ``n`` without the API key (see :mod:`veil.server.tokens`)."""
        self.image(job_id, n, principal)  # 404 / 409 exactly as a download would answer
        row = self.store.one("SELECT expires_at FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise Problem(404, f"no job {job_id!r}", slug="not-found")
        token, expires = self.tokens.issue(job_id, n, principal.key_id, row["expires_at"])
        return {"url": f"{API}/jobs/{job_id}/images/{n}?token={token}", "expires_at": iso(expires)}

    def archive(self, job_id: str, principal: Principal, original_names: bool = False) -> Iterator[bytes]:
        """A ZIP of every finished image, streamed; entries ``0001.jpg``… (index + 1)."""
        row = self._row(job_id, principal)
        if row["status"] in ACTIVE:
            raise Problem(409, f"job {job_id!r} is still {row['status']}", slug="not-ready", headers={"Retry-After": "1"})
        with self._lock:
            state = self._jobs.get(job_id)
        if state is None:
            raise Problem(404, f"no job {job_id!r}", slug="not-found")
        with state.lock:
            entries = [
                (self._entry_name(i, s.format, s.stem if original_names else None), s.spool_out if s.video else s.result)
                for i, s in enumerate(state.slots)
                if (s.spool_out if s.video else s.result) is not None
            ]
        if not entries:
            raise Problem(409, f"job {job_id!r} has no finished image", slug="no-images")
        return _zip_stream(entries)

    # -- deleting ----------------------------------------------------------------------------
    def delete_job(self, job_id: str, principal: Principal) -> None:
        row = self.store.one("SELECT key_id FROM jobs WHERE id = ?", (job_id,))
        if row is None or not owns(row, principal):
            raise Problem(404, f"no job {job_id!r}", slug="not-found")
        self.queue.cancel(job_id)
        self._forget(job_id)

    def delete_image(self, job_id: str, n: int, principal: Principal) -> None:
        self._row(job_id, principal)
        img = self.store.one("SELECT status FROM images WHERE job_id = ? AND idx = ?", (job_id, n))
        if img is None or img["status"] == "deleted":
            raise Problem(404, f"job {job_id!r} has no image {n}", slug="not-found")
        self._drop_image(job_id, n)

    def _drop_image(self, job_id: str, n: int) -> None:
        with self._lock:
            state = self._jobs.get(job_id)
        freed = 0
        if state is not None:
            with state.lock:
                slot = state.slots[n]
                freed = len(slot.original or b"") + len(slot.result or b"")
                slot.original = slot.result = None
                slot.deleted = True
                slot.shred()
        self._adjust_held(-freed)
        self.store.execute(
            "UPDATE images SET status = 'deleted', detections = NULL, sha256 = NULL WHERE job_id = ? AND idx = ?",
            (job_id, n),
        )

    def downloaded_image(self, job_id: str, n: int) -> None:
        """After a download: drop the image if the job asked for it; the job once all are gone."""
        row = self.store.one("SELECT status, delete_after_download FROM jobs WHERE id = ?", (job_id,))
        if not row or not row["delete_after_download"]:
            return
        self._drop_image(job_id, n)
        if row["status"] not in ACTIVE:
            left = self.store.one(
                "SELECT COUNT(*) AS n FROM images WHERE job_id = ? AND status IN ('queued', 'processing', 'done')", (job_id,)
            )
            if left and left["n"] == 0:
                self._forget(job_id)

    def downloaded_archive(self, job_id: str) -> None:
        row = self.store.one("SELECT delete_after_download FROM jobs WHERE id = ?", (job_id,))
        if row and row["delete_after_download"]:
            self._forget(job_id)

    def _forget(self, job_id: str) -> None:
        with self._lock:
            state = self._jobs.pop(job_id, None)
        if state is not None:
            with state.lock:
                freed = state.held_bytes()
                for s in state.slots:
                    s.original = s.result = None
                    s.shred()
            self._adjust_held(-freed)
        self.store.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # -- synchronous calls -------------------------------------------------------------------
    def run_sync(
        self,
        data: bytes,
        options: Options,
        principal: Principal,
        *,
        event: str,
        regions: list | None = None,
    ) -> Any:
        """Anonymize one image now (``/anonymize``, ``/render``); bounded concurrency, audited."""
        self._require_pipeline()
        if not self._sync_slots.acquire(timeout=self.config.sync_wait):
            raise Problem(503, "all synchronous slots are busy; retry later", slug="server-busy",
                          headers={"Retry-After": "5"})
        try:
            key = principal.key
            if key is not None:
                with self.store.transaction() as conn:
                    left = quota_left(conn, key)
                    if left is not None and left < 1:
                        raise Problem(
                            429,
                            f"daily quota of {key.quota_per_day} images spent",
                            slug="quota-exceeded",
                            headers={"Retry-After": str(seconds_to_utc_midnight())},
                        )
                    add_usage(conn, key.id, 1)
            result = self.pipeline(data, options, regions)
            del data
            counts = detection_counts(result.report)
            self.audit.record(
                event,
                key_id=principal.key_id,
                status="done",
                image_count=1,
                options=options.to_json(),
                detections=counts,
                outputs=[hashlib.sha256(result.data).hexdigest()],
            )
            return result
        finally:
            self._sync_slots.release()


_ZIP_PIECE = 1024 * 1024


class _Sink:
    """A write-only, tell-able, non-seekable file for ``zipfile`` to stream into."""

    def __init__(self) -> None:
        self.buf: list[bytes] = []
        self.pos = 0

    def write(self, b: bytes) -> int:
        self.buf.append(bytes(b))
        self.pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.buf)
        self.buf.clear()
        return out


def _zip_stream(entries: list[tuple[str, Any]]) -> Iterator[bytes]:
    """Entries are ``bytes`` or spool files (videos: copied piece by piece, never whole)."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:  # type: ignore[arg-type]
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=time.gmtime()[:6])
            info.external_attr = 0o644 << 16
            if isinstance(data, (bytes, bytearray)):
                zf.writestr(info, data)
            else:
                info.file_size = data.size
                with zf.open(info, "w", force_zip64=True) as entry:
                    for at in range(0, data.size, _ZIP_PIECE):
                        entry.write(data.pread(at, _ZIP_PIECE))
                        chunk = sink.take()
                        if chunk:
                            yield chunk
            chunk = sink.take()
            if chunk:
                yield chunk
    tail = sink.take()
    if tail:
        yield tail
