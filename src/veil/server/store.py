"""SQLite store for job metadata, API keys, usage counters and the audit log.

Never holds image bytes, file names or image metadata. One connection guarded by a
lock (WAL mode, so ``veil keys``/``veil audit`` can read and write while the server
runs). The database file is 0600 inside a 0700 data dir. :class:`Database` is the
interface it shares with the PostgreSQL backend (``veil.server.database``), which
several API nodes use to share keys, quotas and the audit log.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol

from veil.server.config import ensure_private_dir

JOB_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    key_id TEXT,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    expires_at REAL NOT NULL,
    n_images INTEGER NOT NULL,
    options TEXT NOT NULL,
    callback_url TEXT,
    delete_after_download INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    webhook_status TEXT,
    webhook_attempts INTEGER NOT NULL DEFAULT 0,
    base_url TEXT,
    node TEXT
);
CREATE INDEX IF NOT EXISTS jobs_key_status ON jobs(key_id, status);
CREATE INDEX IF NOT EXISTS jobs_expires ON jobs(expires_at);
CREATE TABLE IF NOT EXISTS images (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    status TEXT NOT NULL,
    detections TEXT,
    error TEXT,
    content_type TEXT,
    format TEXT,
    size INTEGER,
    sha256 TEXT,
    kind TEXT NOT NULL DEFAULT 'image',
    attempts INTEGER NOT NULL DEFAULT 0,
    progress TEXT,
    video TEXT,
    result_key TEXT,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS nodes (id TEXT PRIMARY KEY, seen REAL NOT NULL, host TEXT, pid INTEGER);
"""

#: Keys, usage counters and the audit log: the tables several API nodes can share on
#: PostgreSQL (``veil.server.database`` translates this SQLite text to its dialect).
SHARED_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    secret TEXT NOT NULL,
    quota_per_day INTEGER NOT NULL DEFAULT 0,
    max_concurrent INTEGER,
    created REAL NOT NULL,
    revoked REAL
);
CREATE TABLE IF NOT EXISTS usage (
    key_id TEXT NOT NULL,
    day TEXT NOT NULL,
    images INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    event TEXT NOT NULL,
    key_id TEXT,
    job_id TEXT,
    status TEXT,
    image_count INTEGER,
    options TEXT,
    detections TEXT,
    outputs TEXT
);
CREATE INDEX IF NOT EXISTS audit_time ON audit(time);
"""
SCHEMA = JOB_SCHEMA + SHARED_SCHEMA


class Database(Protocol):
    """What keys, quotas and the audit log need of a database: ``?`` placeholders, rows
    as dicts; ``transaction()`` yields a connection whose ``execute(sql, params)`` returns
    a cursor (``fetchone``/``fetchall``). SQL for both backends: no SQLite-only functions
    (``MAX(a, b)``), ``table.column`` in ``ON CONFLICT ... DO UPDATE``."""

    dialect: str

    def transaction(self) -> Any: ...
    def execute(self, sql: str, params: tuple | dict = ()) -> int: ...
    def query(self, sql: str, params: tuple | dict = ()) -> list[dict[str, Any]]: ...
    def one(self, sql: str, params: tuple | dict = ()) -> dict[str, Any] | None: ...
    def close(self) -> None: ...


def for_update(conn: Any) -> str:
    """`` FOR UPDATE`` on PostgreSQL (lock the rows read until the transaction ends);
    nothing on SQLite, whose ``BEGIN IMMEDIATE`` already holds the write lock."""
    return " FOR UPDATE" if getattr(conn, "dialect", "sqlite") == "postgresql" else ""


class Store:
    """Thread-safe access to the server database."""

    dialect = "sqlite"

    def __init__(self, path: Path):
        self.path = Path(path)
        ensure_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(self.path, 0o600)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.executescript(SCHEMA)
        for suffix in ("-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                os.chmod(p, 0o600)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``: read-check-write without races (also across processes)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def execute(self, sql: str, params: tuple | dict = ()) -> int:
        with self._lock:
            return self._conn.execute(sql, params).rowcount

    def query(self, sql: str, params: tuple | dict = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._conn.execute(sql, params).fetchall()]

    def one(self, sql: str, params: tuple | dict = ()) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute(sql, params).fetchone()
            return dict(row) if row is not None else None


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def loads(value: str | None, default: Any = None) -> Any:
    return default if value is None else json.loads(value)


def open_store(data_dir: Path) -> Store:
    return Store(Path(data_dir) / "veil-server.sqlite3")
