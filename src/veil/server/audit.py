"""The audit log: who anonymized how many images, with which options, and what came out.

Each row: time, event (``job``, ``anonymize``, ``render``), key id (never the key), job
id, status, image count, options, detection counts per target and the SHA-256 of every
output. Never image bytes, file names, GPS or any other image metadata.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable

from veil.server.keys import iso
from veil.server.store import Database, dumps, loads


@dataclass(frozen=True)
class AuditEntry:
    id: int
    time: float
    event: str
    key_id: str | None
    job_id: str | None
    status: str | None
    image_count: int
    options: dict[str, Any] | None
    detections: dict[str, int]
    outputs: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": iso(self.time),
            "event": self.event,
            "key_id": self.key_id,
            "job_id": self.job_id,
            "status": self.status,
            "image_count": self.image_count,
            "options": self.options,
            "detections": self.detections,
            "outputs_sha256": self.outputs,
        }


def sum_counts(per_image: Iterable[dict[str, int] | None]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in per_image:
        for target, n in (counts or {}).items():
            total[target] = total.get(target, 0) + int(n)
    return total


class AuditLog:
    """The audit table of the server database (SQLite, or PostgreSQL shared by nodes)."""

    def __init__(self, store: Database):
        self.store = store

    def record(
        self,
        event: str,
        *,
        key_id: str | None,
        job_id: str | None = None,
        status: str | None = None,
        image_count: int = 0,
        options: dict[str, Any] | None = None,
        detections: dict[str, int] | None = None,
        outputs: list[str] | None = None,
    ) -> None:
        self.store.execute(
            "INSERT INTO audit (time, event, key_id, job_id, status, image_count, options, detections, outputs) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            (
                time.time(),
                event,
                key_id,
                job_id,
                status,
                int(image_count),
                dumps(options) if options is not None else None,
                dumps(detections or {}),
                dumps(list(outputs or [])),
            ),
        )

    def entries(
        self,
        *,
        limit: int = 100,
        since: float | None = None,
        key_id: str | None = None,
        job_id: str | None = None,
    ) -> list[AuditEntry]:
        where, params = [], []
        if since is not None:
            where.append("time >= ?")
            params.append(since)
        if key_id:
            where.append("key_id = ?")
            params.append(key_id)
        if job_id:
            where.append("job_id = ?")
            params.append(job_id)
        sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
        params.append(int(limit))
        rows = self.store.query(sql, tuple(params))
        return [
            AuditEntry(
                id=r["id"],
                time=r["time"],
                event=r["event"],
                key_id=r["key_id"],
                job_id=r["job_id"],
                status=r["status"],
                image_count=r["image_count"] or 0,
                options=loads(r["options"]),
                detections=loads(r["detections"], {}),
                outputs=loads(r["outputs"], []),
            )
            for r in reversed(rows)
        ]
