"""The job service: admission and quotas, the job's HTTP-free shapes, downloads and
deletion, over a job repository, a blob store and a task queue.

Embedded mode (the default): records in SQLite, blobs in this process's memory, tasks
in a thread pool. Distributed mode: records and blobs in Redis, tasks on RQ queues
served by ``veil worker`` processes (:mod:`veil.server.distributed`). Either way an
original lives in memory (this process's or Redis's) from upload until its image is
processed, then it is dropped; results live there until downloaded (with
``delete_after_download``), deleted, or expired (TTL after the job ends). Nothing of an
upload — bytes, file names, metadata — is written to disk in the clear. A video is too
large for memory: it arrives in an encrypted spool file (:mod:`veil.server.spool`), its
result is written to another, and each is shredded as soon as it is no longer needed.
Errors are the domain errors of :mod:`veil.server.errors`; the routes turn them into
problem documents in one place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from veil.pipeline.options import Options
from veil.server.audit import AuditLog, sum_counts
from veil.server.blobs import BlobStore, blob_key, hold_ttl
from veil.server.completion import Completion, job_links
from veil.server.config import ServerConfig
from veil.server.errors import (
    Busy,
    ImageFailed,
    NoImages,
    NotFound,
    NotReady,
    QuotaExceeded,
    Unavailable,
    )
from veil.server.keys import ApiKey, KeyManager, iso, seconds_to_utc_midnight, utc_day
from veil.server.queue import QueueFull, Task, TaskQueue
from veil.server.records import ACTIVE, ImageRecord, JobRecord
from veil.server.repository import JobRepository
from veil.server.runner import Pipeline, RetryTask, TaskContext, detection_counts, hidden_regions, run_task
from veil.server.tokens import DownloadTokens
from veil.server.uploads import EXTENSIONS, safe_stem
from veil.server.webhooks import WebhookSender, server_secret

log = logging.getLogger("veil.server.jobs")

API = "/api/v1"

__all__ = ["ACTIVE", "JobManager", "Pipeline", "Principal", "Upload", "detection_counts", "hidden_regions", "owns"]


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key, or nobody (open local mode)."""

    key: ApiKey | None = None

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key else None


def owns(key_id: str | None, principal: Principal) -> bool:
    """A job belongs to the key that created it; one created without a key (open local
    mode, ``--no-require-keys``) belongs to "anonymous" only, never to a key."""
    return key_id == principal.key_id


@dataclass
class Upload:
    data: bytes
    filename: str | None = None
    #: a video: its bytes are in this encrypted spool file (``data`` is empty)
    spool: Any = None


class JobManager:
    """Jobs as the API sees them; the work itself is :func:`veil.server.runner.run_task`."""

    def __init__(
        self,
        config: ServerConfig,
        repo: JobRepository,
        blobs: BlobStore,
        keys: KeyManager,
        audit: AuditLog,
        queue: TaskQueue,
        webhooks: WebhookSender,
        pipeline: Pipeline,
        spool: Any = None,
        *,
        notify: Callable[..., Any] | None = None,
        runs_tasks: bool = True,
    ):
        self.config = config
        self.repo = repo
        self.blobs = blobs
        self.keys = keys
        self.audit = audit
        self.queue = queue
        self.webhooks = webhooks
        self.pipeline = pipeline
        #: the :class:`~veil.server.spool.SpoolDir` of video uploads (and, embedded, their results)
        self.spool = spool
        self.tokens = DownloadTokens()
        #: ``False`` in the distributed mode: ``veil worker`` processes run the tasks
        self.runs_tasks = runs_tasks
        self._sync_slots = threading.BoundedSemaphore(config.effective_sync_concurrency)
        self._sweeper: threading.Thread | None = None
        self._stop = threading.Event()
        self.complete = Completion(repo, blobs, audit, config.ttl, self.secret_for, notify or self._send_webhook)

    #: the webhook secret of jobs without a key (``None``: this data dir's own)
    anonymous_secret: str | None = None

    def _send_webhook(self, url: str, event: str, payload: dict[str, Any], secret: str, job_id: str,
                      key_id: str | None = None) -> str:  # fmt: skip
        return self.webhooks.send(url, event, payload, secret, job_id=job_id)

    def secret_for(self, key_id: str | None) -> str:
        key = self.keys.get(key_id) if key_id else None
        return key.secret if key else (self.anonymous_secret or server_secret(self.config.data_dir))

    def task_context(self) -> TaskContext:
        video = None
        if self.spool is not None:
            from veil.server.videotasks import video_runner

            video = video_runner(self.spool)
        return TaskContext(anonymize=self.pipeline, complete=self.complete, ttl=self.config.ttl, video=video)

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._reap()
        if self.runs_tasks:
            ctx = self.task_context()
            self.queue.start(lambda task: self._run(task, ctx))
        self.webhooks.start()
        self._stop.clear()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="veil-sweeper", daemon=True)
        self._sweeper.start()

    def _run(self, task: Task, ctx: TaskContext) -> None:
        try:
            run_task(task, self.blobs, self.repo, ctx)
        except RetryTask:  # not with max_attempts=1; kept for a context that allows more
            self.queue.submit([task])

    def _reap(self) -> None:
        """Forget the jobs of API processes that are gone (their blobs died with them) and
        give back the quota of those they never finished, so they do not count against a key."""
        lost = self.repo.heartbeat(time.time())
        unfinished = [j for j in lost if j.status in ACTIVE and j.key_id]
        if unfinished:
            with self.keys.store.transaction() as conn:
                for j in unfinished:
                    conn.execute("UPDATE usage SET images = CASE WHEN images > ? THEN images - ? ELSE 0 END "
                                 "WHERE key_id = ? AND day = ?", (int(j.n_images), int(j.n_images), j.key_id, utc_day(j.created)))  # fmt: skip
        if lost:
            log.info("%d job(s) of a stopped server process are lost; quota given back for %d", len(lost), len(unfinished))

    def stop(self) -> None:
        self._stop.set()
        self.queue.stop()
        self.webhooks.stop()
        if self._sweeper is not None:
            self._sweeper.join(5)
        leave = getattr(self.repo, "leave", None)
        if callable(leave):  # embedded: the jobs go with this process's memory
            leave()
        clear = getattr(self.blobs, "clear", None)
        if callable(clear):
            clear()
        if self.spool is not None:
            self.spool.shred_all()

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.config.effective_sweep_interval):
            try:
                self.sweep()
                self._reap()
            except Exception:  # noqa: BLE001
                log.exception("sweep failed")

    def sweep(self, now: float | None = None) -> int:
        """Forget every finished job past its ``expires_at``; returns how many."""
        now = time.time() if now is None else now
        ids = self.repo.expired(now)
        for job_id in ids:
            self._forget(job_id)
        sweep = getattr(self.blobs, "sweep", None)
        if callable(sweep):
            sweep(now)
        return len(ids)

    def _require_pipeline(self) -> None:
        if self.runs_tasks and not self.pipeline.available():
            raise Unavailable("the anonymization pipeline is not installed on this server", retry_after=60,
                              slug="pipeline-unavailable")  # fmt: skip

    @property
    def held_bytes(self) -> int:
        return self.blobs.held_bytes()

    # -- create ----------------------------------------------------------------------------
    def _check_room(self, uploads: Sequence[Upload]) -> None:
        incoming = sum(u.spool.size for u in uploads if u.spool is not None)
        # the uploads are spooled already; their results will be about as large
        if incoming and self.runs_tasks and self.spool.bytes_on_disk + incoming > self.config.limits.max_spool_bytes:
            raise Busy("the server holds too many videos right now; retry later", retry_after=60)
        if incoming and not self.runs_tasks and self.held_bytes + 2 * incoming > self.config.limits.max_spool_bytes:
            raise Busy("the job store holds too many videos right now; retry later", retry_after=60)
        incoming = sum(len(u.data) for u in uploads)
        # Results are about as large as originals: reserve room for both.
        if self.held_bytes + 2 * incoming > self.config.limits.max_held_bytes:
            raise Busy("the server holds too many images in memory right now; retry later",
                       retry_after=self.queue.retry_after())  # fmt: skip

    def _charge(self, key: ApiKey, n: int) -> None:
        left = self.keys.reserve(key, n)
        if left is not None and n > left:
            raise QuotaExceeded(f"daily quota spent: {left} of {key.quota_per_day} images left today, {n} submitted",
                                retry_after=seconds_to_utc_midnight())  # fmt: skip

    def _refund(self, key: ApiKey | None, n: int) -> None:
        if key is not None:
            self.keys.refund(key.id, n)

    def create(self, uploads: Sequence[Upload], options: Options, principal: Principal, *,
               callback_url: str | None, delete_after_download: bool, base_url: str) -> dict[str, Any]:  # fmt: skip
        self._require_pipeline()
        self._check_room(uploads)
        n = len(uploads)
        key = principal.key
        now = time.time()
        job = JobRecord(
            id="j_" + secrets.token_urlsafe(16), key_id=principal.key_id, n_images=n, options=options.to_json(),
            created=now, expires_at=now + self.config.ttl, callback_url=callback_url,
            delete_after_download=delete_after_download, base_url=base_url.rstrip("/"),
            images=[ImageRecord(i, kind="video" if u.spool is not None else "image") for i, u in enumerate(uploads)],
        )  # fmt: skip
        # the record first: it takes the key's slot for an unfinished job atomically
        limit = (key.max_concurrent or self.config.limits.max_concurrent_jobs_per_key) if key else None
        self.repo.create(job, max_active=limit)
        try:
            if key is not None:
                self._charge(key, n)
        except BaseException:
            self._forget(job.id)
            raise
        hold = hold_ttl(self.config.ttl)
        try:
            for i, u in enumerate(uploads):
                self.blobs.put(blob_key(job.id, "in", i), u.spool if u.spool is not None else u.data, hold)
            stems = [safe_stem(u.filename) for u in uploads]
            if any(stems):  # original names live with the blobs (memory), never in the records
                self.blobs.put(blob_key(job.id, "names"), json.dumps(stems).encode(), hold)
            self.queue.submit([Task(job.id, i, im.kind) for i, im in enumerate(job.images)])
        except BaseException as exc:
            try:  # each step on its own: the refund must not depend on the store being up
                self._refund(key, n)
            finally:
                try:
                    self._forget(job.id)
                except Exception:  # noqa: BLE001 - its records and blobs expire by themselves
                    log.warning("could not drop a job that failed to start (%s)", type(exc).__name__)
            if isinstance(exc, QueueFull):
                raise Busy("the job queue is full; retry later", retry_after=exc.retry_after, slug="queue-full") from None
            raise
        return self._body(job)

    def webhook_result(self, job_id: str, status: str, attempts: int) -> None:
        self.repo.set_webhook(job_id, status, attempts)

    # -- reading -----------------------------------------------------------------------------
    def _job(self, job_id: str, principal: Principal) -> JobRecord:
        job = self.repo.get(job_id)
        if job is None or not owns(job.key_id, principal):
            raise NotFound(f"no job {job_id!r} (it may have expired or been deleted)")
        if job.status not in ACTIVE and job.expires_at <= time.time():
            self._forget(job_id)
            raise NotFound(f"no job {job_id!r} (it has expired)")
        return job

    def _regions(self, job_id: str, im: ImageRecord) -> list[dict[str, Any]]:
        attempt = im.result_key.rsplit("/", 1)[-1] if im.result_key else None
        raw = self.blobs.get(blob_key(job_id, "regions", im.idx, int(attempt))) if attempt else None
        return json.loads(raw) if raw else []

    def _stems(self, job_id: str) -> list[str | None]:
        raw = self.blobs.get(blob_key(job_id, "names"))
        return json.loads(raw) if raw else []

    def status(self, job_id: str, principal: Principal) -> dict[str, Any]:
        return self._body(self._job(job_id, principal))

    def _body(self, job: JobRecord) -> dict[str, Any]:
        job_id = job.id
        out_images = []
        for im in job.images:
            entry: dict[str, Any] = {"index": im.idx, "status": im.status, "detections": im.detections,
                                     "error": im.error}  # fmt: skip
            if im.status == "done":
                entry.update(content_type=im.content_type, format=im.format, size=im.size, sha256=im.sha256,
                             name=self._entry_name(im.idx, im.format, None), url=f"{API}/jobs/{job_id}/images/{im.idx}",
                             regions=[] if im.kind == "video" else self._regions(job_id, im))  # fmt: skip
            entry["kind"] = im.kind
            if im.kind == "video":
                entry["progress"] = im.progress
                entry["video"] = im.video
            out_images.append(entry)
        body: dict[str, Any] = {
            "id": job_id,
            "status": job.status,
            "created_at": iso(job.created),
            "started_at": iso(job.started),
            "finished_at": iso(job.finished),
            "expires_at": iso(job.expires_at),
            "image_count": job.n_images,
            "delete_after_download": job.delete_after_download,
            "error": job.error,
            "options": job.options,
            "detections": sum_counts(i["detections"] for i in out_images if i["status"] == "done"),
            "images": out_images,
            "links": job_links(job_id, job.n_images),
        }
        if job.callback_url:
            body["webhook"] = {"status": job.webhook_status or "waiting", "attempts": job.webhook_attempts}
        return body

    @staticmethod
    def _entry_name(idx: int, fmt: str | None, stem: str | None) -> str:
        ext = EXTENSIONS.get(fmt or "", fmt or "bin")
        return f"{idx + 1:04d}_{stem}.{ext}" if stem else f"{idx + 1:04d}.{ext}"

    def _image_record(self, job: JobRecord, n: int) -> ImageRecord:
        if not 0 <= n < len(job.images) or job.images[n].status == "deleted":
            raise NotFound(f"job {job.id!r} has no image {n}")
        im = job.images[n]
        if im.status == "failed":
            raise ImageFailed(f"image {n} failed: {im.error}")
        if im.status != "done":
            raise NotReady(f"image {n} is still {im.status}", retry_after=1)
        return im

    def image(self, job_id: str, n: int, principal: Principal) -> tuple[Any, str, str]:
        """``(bytes or spool file, content_type, archive_name)`` of one finished image or video."""
        data, ctype, name, _ = self.download(job_id, n, principal)
        return data, ctype, name

    def download(self, job_id: str, n: int, principal: Principal) -> tuple[Any, str, str, str | None]:
        """:meth:`image` plus the result's SHA-256 (its ETag, for ``If-Range``)."""
        job = self._job(job_id, principal)
        im = self._image_record(job, n)
        result = self.blobs.get(im.result_key) if im.result_key else None
        if result is None:
            raise NotFound(f"job {job_id!r} has no image {n}")
        return result, im.content_type or "application/octet-stream", self._entry_name(n, im.format, None), im.sha256

    def link(self, job_id: str, n: int, principal: Principal) -> dict[str, Any]:
        """A short-lived URL that downloads result ``n`` without the API key (see :mod:`veil.server.tokens`)."""
        self.image(job_id, n, principal)  # not found / not ready exactly as a download would answer
        job = self._job(job_id, principal)
        token, expires = self.tokens.issue(job_id, n, principal.key_id, job.expires_at)
        return {"url": f"{API}/jobs/{job_id}/images/{n}?token={token}", "expires_at": iso(expires)}

    def archive(self, job_id: str, principal: Principal, original_names: bool = False) -> Iterator[bytes]:
        """A ZIP of every finished image, streamed; entries ``0001.jpg``… (index + 1)."""
        job = self._job(job_id, principal)
        if job.status in ACTIVE:
            raise NotReady(f"job {job_id!r} is still {job.status}", retry_after=1)
        stems = self._stems(job_id) if original_names else []
        entries = []
        for im in job.images:
            data = self.blobs.get(im.result_key) if im.status == "done" and im.result_key else None
            if data is not None:
                stem = stems[im.idx] if im.idx < len(stems) else None
                entries.append((self._entry_name(im.idx, im.format, stem), data))
        if not entries:
            raise NoImages(f"job {job_id!r} has no finished image")
        return _zip_stream(entries)

    # -- deleting ----------------------------------------------------------------------------
    def delete_job(self, job_id: str, principal: Principal) -> None:
        job = self.repo.get(job_id)
        if job is None or not owns(job.key_id, principal):
            raise NotFound(f"no job {job_id!r}")
        self.queue.cancel(job_id)
        self._forget(job_id)

    def delete_image(self, job_id: str, n: int, principal: Principal) -> None:
        job = self._job(job_id, principal)
        if not 0 <= n < len(job.images) or job.images[n].status == "deleted":
            raise NotFound(f"job {job_id!r} has no image {n}")
        self._drop_image(job_id, n, job.images[n])

    def _drop_image(self, job_id: str, n: int, im: ImageRecord) -> None:
        existed, left = self.repo.delete_image(job_id, n)
        keys = [blob_key(job_id, "in", n)]
        if im.result_key:  # the result and its regions (same attempt)
            keys += [im.result_key, im.result_key.replace("/out/", "/regions/", 1)]
        self.blobs.delete(*keys)
        if existed and left == 0:
            self.complete(job_id)

    def downloaded_image(self, job_id: str, n: int) -> None:
        """After a download: drop the image if the job asked for it; the job once all are gone."""
        job = self.repo.get(job_id)
        if job is None or not job.delete_after_download or not 0 <= n < len(job.images):
            return
        self._drop_image(job_id, n, job.images[n])
        job = self.repo.get(job_id)
        if job is not None and job.status not in ACTIVE and all(i.status in ("failed", "deleted") for i in job.images):
            self._forget(job_id)

    def downloaded_archive(self, job_id: str) -> None:
        job = self.repo.get(job_id)
        if job is not None and job.delete_after_download:
            self._forget(job_id)

    def _forget(self, job_id: str) -> None:
        self.repo.delete(job_id)
        self.blobs.delete_job(job_id)

    # -- synchronous calls -------------------------------------------------------------------
    def run_sync(self, data: bytes, options: Options, principal: Principal, *, event: str,
                 regions: list | None = None) -> Any:  # fmt: skip
        """Anonymize one image now (``/anonymize``, ``/render``); bounded concurrency, audited."""
        if not self.pipeline.available():
            raise Unavailable("the anonymization pipeline is not installed on this server", retry_after=60,
                              slug="pipeline-unavailable")  # fmt: skip
        if not self._sync_slots.acquire(timeout=self.config.sync_wait):
            raise Busy("all synchronous slots are busy; retry later", retry_after=5)
        try:
            key = principal.key
            if key is not None and (left := self.keys.reserve(key, 1)) is not None and left < 1:
                raise QuotaExceeded(f"daily quota of {key.quota_per_day} images spent",
                                    retry_after=seconds_to_utc_midnight())  # fmt: skip
            result = self.pipeline(data, options, regions)
            del data
            self.audit.record(event, key_id=principal.key_id, status="done", image_count=1, options=options.to_json(),
                              detections=detection_counts(result.report),
                              outputs=[hashlib.sha256(result.data).hexdigest()])  # fmt: skip
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
