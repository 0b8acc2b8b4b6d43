"""API keys: stored as SHA-256 hashes, with a per-key daily image quota, a limit on
concurrent jobs and a webhook signing secret.

A key looks like ``veil_<43 url-safe chars>``; it is shown once, at creation. Its id
(``k_<hex>``) is what logs, the audit table and ``veil keys list`` show.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from veil.server.store import Database, for_update

KEY_PREFIX = "veil_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    secret: str
    quota_per_day: int  # 0 = unlimited
    max_concurrent: int | None  # None = server default
    created: float
    revoked: float | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "ApiKey":
        return cls(
            id=row["id"],
            name=row["name"],
            secret=row["secret"],
            quota_per_day=int(row["quota_per_day"] or 0),
            max_concurrent=row["max_concurrent"],
            created=row["created"],
            revoked=row["revoked"],
        )

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "quota_per_day": self.quota_per_day,
            "max_concurrent": self.max_concurrent,
            "created": iso(self.created),
            "revoked": iso(self.revoked) if self.revoked else None,
        }


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    token: str  # the plaintext key: shown once, never stored


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def utc_day(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, timezone.utc).strftime("%Y-%m-%d")


def seconds_to_utc_midnight(ts: float | None = None) -> int:
    now = datetime.fromtimestamp(time.time() if ts is None else ts, timezone.utc)
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - now).total_seconds()) + 1)


class KeyManager:
    """Keys and their daily usage on the server database (SQLite, or PostgreSQL shared
    by several API nodes)."""

    def __init__(self, store: Database):
        self.store = store

    def create(self, name: str, quota_per_day: int = 0, max_concurrent: int | None = None) -> CreatedKey:
        if quota_per_day < 0:
            raise ValueError("quota_per_day must be >= 0")
        if max_concurrent is not None and max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        token = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id="k_" + secrets.token_hex(6),
            name=name or "",
            secret="whsec_" + secrets.token_urlsafe(32),
            quota_per_day=int(quota_per_day),
            max_concurrent=max_concurrent,
            created=time.time(),
            revoked=None,
        )
        self.store.execute(
            "INSERT INTO api_keys (id, name, hash, secret, quota_per_day, max_concurrent, created) VALUES (?,?,?,?,?,?,?)",
            (key.id, key.name, hash_key(token), key.secret, key.quota_per_day, key.max_concurrent, key.created),
        )
        return CreatedKey(key, token)

    def list(self, include_revoked: bool = True) -> list[ApiKey]:
        sql = "SELECT * FROM api_keys" + ("" if include_revoked else " WHERE revoked IS NULL") + " ORDER BY created"
        return [ApiKey.from_row(r) for r in self.store.query(sql)]

    def get(self, key_id: str) -> ApiKey | None:
        row = self.store.one("SELECT * FROM api_keys WHERE id = ?", (key_id,))
        return ApiKey.from_row(row) if row else None

    def revoke(self, key_id: str) -> bool:
        return self.store.execute("UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (time.time(), key_id)) > 0

    def has_active_keys(self) -> bool:
        return self.store.one("SELECT 1 AS x FROM api_keys WHERE revoked IS NULL LIMIT 1") is not None

    def authenticate(self, token: str) -> ApiKey | None:
        """The active key for ``token``, or ``None``. Compared by hash, in constant time."""
        if not token:
            return None
        digest = hash_key(token.strip())
        row = self.store.one("SELECT * FROM api_keys WHERE hash = ?", (digest,))
        if row is None or row["revoked"] is not None or not hmac.compare_digest(row["hash"], digest):
            return None
        return ApiKey.from_row(row)

    # -- quota -------------------------------------------------------------------------
    def used_today(self, key_id: str) -> int:
        row = self.store.one("SELECT images FROM usage WHERE key_id = ? AND day = ?", (key_id, utc_day()))
        return int(row["images"]) if row else 0

    def reserve(self, key: ApiKey, images: int) -> int | None:
        """Take ``images`` of ``key``'s quota for today, in one race-free transaction.

        Returns the images that were left before (``None`` = unlimited); when that is
        fewer than ``images`` nothing is taken and the caller refuses the request.
        """
        with self.store.transaction() as conn:
            left = quota_left(conn, key)
            if left is None or images <= left:
                add_usage(conn, key.id, images)
            return left

    def refund(self, key_id: str, images: int) -> None:
        """Give back images reserved for work that was never queued."""
        with self.store.transaction() as conn:
            add_usage(conn, key_id, -images)


def quota_left(conn: Any, key: ApiKey) -> int | None:
    """Images ``key`` may still submit today (``None`` = unlimited). Call inside a
    transaction: today's usage row is created and locked, so a concurrent
    read-check-write of the same key (another thread or API node) waits for this one
    to end instead of reading the same count."""
    if not key.quota_per_day:
        return None
    day = utc_day()
    conn.execute(
        "INSERT INTO usage (key_id, day, images) VALUES (?,?,0) ON CONFLICT(key_id, day) DO NOTHING", (key.id, day)
    )
    row = conn.execute("SELECT images FROM usage WHERE key_id = ? AND day = ?" + for_update(conn), (key.id, day)).fetchone()
    return max(0, key.quota_per_day - (int(row["images"]) if row else 0))


def add_usage(conn: Any, key_id: str, images: int) -> None:
    conn.execute(
        "INSERT INTO usage (key_id, day, images) VALUES (?,?,?) "
        "ON CONFLICT(key_id, day) DO UPDATE SET images = usage.images + excluded.images",
        (key_id, utc_day(), images),
    )
