"""Finishing a job: its status, the audit record and the webhook, exactly once.

Called by the task that settles a job's last image (in ``veil serve``'s threads or in a
``veil worker``), so it needs only the repository, the blob store, the audit log and a
way to send the webhook (a thread of the API process, or a queued task with retries).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from veil.server.audit import AuditLog, sum_counts
from veil.server.blobs import BlobStore
from veil.server.keys import iso
from veil.server.records import ACTIVE
from veil.server.repository import JobRepository

API = "/api/v1"


def job_links(job_id: str, n: int, base: str = "") -> dict[str, Any]:
    root = f"{base}{API}/jobs/{job_id}"
    return {"self": root, "archive": f"{root}/archive", "images": [f"{root}/images/{i}" for i in range(n)]}


#: ``notify(url, event, payload, secret, job_id, key_id)`` sends a webhook (never blocks for long)
Notify = Callable[[str, str, dict[str, Any], str, str], Any]


@dataclass
class Completion:
    repo: JobRepository
    blobs: BlobStore
    audit: AuditLog
    ttl: float
    #: the webhook secret of a key id (``None``: the server's own secret)
    secret_for: Callable[[str | None], str]
    notify: Notify

    def __call__(self, job_id: str) -> None:
        job = self.repo.get(job_id)
        if job is None or job.status not in ACTIVE or any(i.status in ACTIVE for i in job.images):
            return  # gone, finished already, or not all settled
        images = job.images
        done = [i for i in images if i.status == "done"]
        failed = [i for i in images if i.status == "failed"]
        status = "done" if done or not failed else "failed"
        error = None
        if status == "failed":
            error = failed[0].error if len({i.error for i in failed}) == 1 else "every image failed"
        now = time.time()
        ttl = (job.expires_at - job.created) or self.ttl  # the TTL of the API node that took the job
        counts = sum_counts(i.detections or {} for i in done)
        if not self.repo.finish(job_id, status, error, now, now + ttl):
            return  # deleted meanwhile, or another caller finished it: it audits, once
        self.blobs.expire_job(job_id, ttl)
        self.audit.record("job", key_id=job.key_id, job_id=job_id, status=status, image_count=len(images),
                          options=job.options, detections=counts, outputs=[i.sha256 for i in done])  # fmt: skip
        if not job.callback_url:
            return
        payload = {
            "event": f"job.{status}",
            "job": {"id": job_id, "status": status, "images": len(images), "done": len(done), "failed": len(failed),
                    "detections": counts, "finished_at": iso(now), "expires_at": iso(now + ttl)},  # fmt: skip
            "links": job_links(job_id, len(images), base=job.base_url.rstrip("/")),
        }
        self.repo.set_webhook(job_id, "pending")
        self.notify(job.callback_url, f"job.{status}", payload, self.secret_for(job.key_id), job_id, job.key_id)
