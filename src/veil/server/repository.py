"""The job repository: job and image records, claimed and settled atomically.

One interface (:class:`JobRepository`), two homes: SQLite in the data directory for the
embedded mode (:class:`SqliteJobRepository`, here) and Redis for the distributed mode
(:class:`veil.server.redis_store.RedisJobRepository`). A record never holds pixels,
file names or metadata values. Whoever settles an image learns how many are left; the
one that brings it to zero finishes the job, so a job is finished exactly once however
many workers ran its images.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, Iterable, Protocol, runtime_checkable

from veil.server.errors import TooManyJobs
from veil.server.records import ACTIVE, SETTLED, ImageRecord, JobRecord
from veil.server.store import Store

_IMAGE_FIELDS = ("detections", "error", "content_type", "format", "size", "sha256", "video", "result_key")
_JSON_FIELDS = ("detections", "progress", "video")


@runtime_checkable
class JobRepository(Protocol):
    """Records of jobs and their images."""

    def create(self, job: JobRecord, max_active: int | None = None) -> None:
        """Store a new job and its images (all queued); :class:`~veil.server.errors.TooManyJobs`
        when its key already has ``max_active`` unfinished jobs (checked atomically)."""

    def get(self, job_id: str) -> JobRecord | None:
        """The job with its images, or ``None``."""

    def active_count(self, key_id: str) -> int:
        """Unfinished jobs of one key (for its limit of concurrent jobs)."""

    def claim(self, job_id: str, idx: int) -> ImageRecord | None:
        """Mark an image processing (one more attempt) and its job started; ``None`` when
        the job is gone or the image already settled (nothing to do)."""

    def set_progress(self, job_id: str, idx: int, progress: dict[str, Any]) -> None:
        """A video's progress (throttled by the caller)."""

    def settle(self, job_id: str, idx: int, status: str, **values: Any) -> int | None:
        """Mark an active image done or failed with ``values``; the number of images
        still active, or ``None`` when it had settled already (another attempt won, or
        it was deleted) or the job is gone: the caller then discards its result."""

    def delete_image(self, job_id: str, idx: int) -> tuple[bool, int | None]:
        """Mark an image deleted: (it existed and was not deleted before, images still
        active if this settled an active one, else ``None``)."""

    def finish(self, job_id: str, status: str, error: str | None, finished: float, expires_at: float) -> bool:
        """Mark an unfinished job finished; ``False`` when it is gone or finished already
        (so whoever gets ``True`` audits it and sends its webhook, once)."""

    def set_webhook(self, job_id: str, status: str, attempts: int | None = None) -> None:
        """Record where the job's webhook stands."""

    def delete(self, job_id: str) -> None:
        """Forget the job and its images."""

    def expired(self, now: float) -> list[str]:
        """Finished jobs whose time is up."""

    def heartbeat(self, now: float) -> list[JobRecord]:
        """Say this API process is alive; return (and forget) the jobs of processes that
        are not (their blobs died with them). Shared repositories return nothing."""


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _row_to_image(row: dict[str, Any]) -> ImageRecord:
    data = dict(row)
    for k in _JSON_FIELDS:
        data[k] = json.loads(data[k]) if data.get(k) else None
    return ImageRecord.from_json(data)


class SqliteJobRepository:
    """Jobs in the server's SQLite file; each API process marks its own jobs with its
    node id and a heartbeat, so two processes on one data directory leave each other's
    jobs alone, and a restarted one forgets only those of a process that is gone."""

    def __init__(self, store: Store, node: str, *, stale_after: float = 30.0):
        self.store = store
        self.node = node
        self.stale_after = float(stale_after)
        self._migrate()

    def _migrate(self) -> None:
        """The tables are :data:`veil.server.store.JOB_SCHEMA` (created with the store);
        a database file of an earlier version gets the columns it lacks."""
        with self.store.transaction() as conn:
            have = {r[1] for r in conn.execute("PRAGMA table_info(jobs)").fetchall()}
            for col, decl in (("node", "TEXT"), ("base_url", "TEXT")):
                if col not in have:
                    conn.execute(f"ALTER TABLE jobs ADD COLUMN {col} {decl}")
            have = {r[1] for r in conn.execute("PRAGMA table_info(images)").fetchall()}
            for col, decl in (("kind", "TEXT NOT NULL DEFAULT 'image'"), ("attempts", "INTEGER NOT NULL DEFAULT 0"),
                              ("progress", "TEXT"), ("video", "TEXT"), ("result_key", "TEXT")):  # fmt: skip
                if col not in have:
                    conn.execute(f"ALTER TABLE images ADD COLUMN {col} {decl}")
            conn.execute("CREATE INDEX IF NOT EXISTS jobs_node ON jobs(node)")

    # -- writes ----------------------------------------------------------------------------
    def create(self, job: JobRecord, max_active: int | None = None) -> None:
        with self.store.transaction() as conn:
            if job.key_id and max_active:
                active = conn.execute("SELECT COUNT(*) FROM jobs WHERE key_id = ? AND status IN ('queued', 'processing')",
                                      (job.key_id,)).fetchone()[0]  # fmt: skip
                if active >= max_active:
                    raise TooManyJobs(f"this key already has {active} unfinished job(s); the limit is {max_active}",
                                      retry_after=5)  # fmt: skip
            conn.execute(
                "INSERT INTO jobs (id, key_id, status, created, expires_at, n_images, options, callback_url, "
                "delete_after_download, base_url, node) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (job.id, job.key_id, job.status, job.created, job.expires_at, job.n_images,
                 json.dumps(job.options, sort_keys=True), job.callback_url, int(job.delete_after_download),
                 job.base_url, self.node),  # fmt: skip
            )
            conn.executemany(
                "INSERT INTO images (job_id, idx, status, kind) VALUES (?,?,?,?)",
                [(job.id, im.idx, "queued", im.kind) for im in job.images],
            )

    def _left(self, conn: Any, job_id: str) -> int:
        return int(conn.execute(
            "SELECT COUNT(*) FROM images WHERE job_id = ? AND status IN ('queued', 'processing')", (job_id,)
        ).fetchone()[0])  # fmt: skip

    def claim(self, job_id: str, idx: int) -> ImageRecord | None:
        with self.store.transaction() as conn:
            n = conn.execute(
                "UPDATE images SET status = 'processing', attempts = attempts + 1 "
                "WHERE job_id = ? AND idx = ? AND status IN ('queued', 'processing')", (job_id, idx),
            ).rowcount  # fmt: skip
            if not n:
                return None
            conn.execute("UPDATE jobs SET status = 'processing', started = COALESCE(started, ?) "
                         "WHERE id = ? AND status = 'queued'", (time.time(), job_id))  # fmt: skip
            row = conn.execute("SELECT * FROM images WHERE job_id = ? AND idx = ?", (job_id, idx)).fetchone()
        return _row_to_image(dict(row))

    def set_progress(self, job_id: str, idx: int, progress: dict[str, Any]) -> None:
        self.store.execute("UPDATE images SET progress = ? WHERE job_id = ? AND idx = ?",
                           (json.dumps(progress), job_id, idx))  # fmt: skip

    def settle(self, job_id: str, idx: int, status: str, **values: Any) -> int | None:
        assert status in ("done", "failed")
        sets = ["status = ?"] + [f"{k} = ?" for k in values if k in _IMAGE_FIELDS + ("progress",)]
        params = [status] + [json.dumps(v) if k in _JSON_FIELDS and v is not None else v
                             for k, v in values.items() if k in _IMAGE_FIELDS + ("progress",)]  # fmt: skip
        with self.store.transaction() as conn:
            n = conn.execute(
                f"UPDATE images SET {', '.join(sets)} WHERE job_id = ? AND idx = ? AND status IN ('queued', 'processing')",
                (*params, job_id, idx),
            ).rowcount
            return self._left(conn, job_id) if n else None

    def delete_image(self, job_id: str, idx: int) -> tuple[bool, int | None]:
        with self.store.transaction() as conn:
            row = conn.execute("SELECT status FROM images WHERE job_id = ? AND idx = ?", (job_id, idx)).fetchone()
            if row is None or row[0] == "deleted":
                return False, None
            conn.execute("UPDATE images SET status = 'deleted', detections = NULL, sha256 = NULL, result_key = NULL "
                         "WHERE job_id = ? AND idx = ?", (job_id, idx))  # fmt: skip
            return True, (self._left(conn, job_id) if row[0] in ACTIVE else None)

    def finish(self, job_id: str, status: str, error: str | None, finished: float, expires_at: float) -> bool:
        return self.store.execute(
            "UPDATE jobs SET status = ?, finished = ?, expires_at = ?, error = ? "
            "WHERE id = ? AND status IN ('queued', 'processing')",
            (status, finished, expires_at, error, job_id),
        ) > 0

    def set_webhook(self, job_id: str, status: str, attempts: int | None = None) -> None:
        if attempts is None:
            self.store.execute("UPDATE jobs SET webhook_status = ? WHERE id = ?", (status, job_id))
        else:
            self.store.execute("UPDATE jobs SET webhook_status = ?, webhook_attempts = ? WHERE id = ?",
                               (status, attempts, job_id))  # fmt: skip

    def delete(self, job_id: str) -> None:
        self.store.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # -- reads -----------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        # another process's job is not this one's to show: its blobs are in that memory
        row = self.store.one("SELECT * FROM jobs WHERE id = ? AND node = ?", (job_id, self.node))
        if row is None:
            return None
        images = self.store.query("SELECT * FROM images WHERE job_id = ? ORDER BY idx", (job_id,))
        return self._job(row, images)

    @staticmethod
    def _job(row: dict[str, Any], images: Iterable[dict[str, Any]]) -> JobRecord:
        data = dict(row)
        data["options"] = json.loads(data["options"] or "{}")
        data["delete_after_download"] = bool(data["delete_after_download"])
        data["base_url"] = data.get("base_url") or ""
        rec = JobRecord.from_json(data)
        rec.images = [_row_to_image(i) for i in images]
        return rec

    def active_count(self, key_id: str) -> int:
        row = self.store.one("SELECT COUNT(*) AS n FROM jobs WHERE key_id = ? AND status IN ('queued', 'processing')",
                             (key_id,))  # fmt: skip
        return int(row["n"]) if row else 0

    def expired(self, now: float) -> list[str]:
        rows = self.store.query("SELECT id FROM jobs WHERE expires_at <= ? AND status NOT IN ('queued', 'processing') "
                                "AND (node = ? OR node IS NULL)", (now, self.node))  # fmt: skip
        return [r["id"] for r in rows]

    def heartbeat(self, now: float) -> list[JobRecord]:
        host, pid = socket.gethostname(), os.getpid()
        with self.store.transaction() as conn:
            conn.execute("INSERT INTO nodes (id, seen, host, pid) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT(id) DO UPDATE SET seen = excluded.seen", (self.node, now, host, pid))  # fmt: skip
            nodes = conn.execute("SELECT id, seen, host, pid FROM nodes WHERE id != ?", (self.node,)).fetchall()
            # gone: silent for too long, or a process of this host that no longer exists
            dead = {n[0] for n in nodes if n[1] < now - self.stale_after or (n[2] == host and not _alive(n[3]))}
            alive = {self.node} | {n[0] for n in nodes} - dead
            rows = conn.execute("SELECT * FROM jobs").fetchall()
            lost = [self._job(dict(r), []) for r in rows if dict(r).get("node") not in alive]
            for job in lost:
                conn.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
            for node in dead:
                conn.execute("DELETE FROM nodes WHERE id = ?", (node,))
        return lost

    def leave(self) -> None:
        """This process stops: its jobs go with its memory (and its node row)."""
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM jobs WHERE node = ?", (self.node,))
            conn.execute("DELETE FROM nodes WHERE id = ?", (self.node,))


__all__ = ["ACTIVE", "SETTLED", "JobRepository", "SqliteJobRepository"]
