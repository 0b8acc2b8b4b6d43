"""Job and image records: what the job repository holds (never pixels or file names)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: an image or job that still has work to do
ACTIVE = ("queued", "processing")
#: an image that has no more work to do
SETTLED = ("done", "failed", "deleted")


@dataclass
class ImageRecord:
    idx: int
    status: str = "queued"
    kind: str = "image"  # or "video"
    detections: dict[str, int] | None = None
    error: str | None = None
    content_type: str | None = None
    format: str | None = None
    size: int | None = None
    sha256: str | None = None
    #: times a worker has started this image (a killed worker's task is run again)
    attempts: int = 0
    #: a video's ``{"stage", "frames_done", "frames_total"}`` while (and after) it runs
    progress: dict[str, Any] | None = None
    #: a video's report (frames, tracks...; no pixels, names or metadata values)
    video: dict[str, Any] | None = None
    #: which blob holds the result (the attempt that won; see run_task)
    result_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ImageRecord":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class JobRecord:
    id: str
    key_id: str | None
    n_images: int
    options: dict[str, Any]
    created: float
    expires_at: float
    status: str = "queued"
    started: float | None = None
    finished: float | None = None
    callback_url: str | None = None
    delete_after_download: bool = False
    error: str | None = None
    webhook_status: str | None = None
    webhook_attempts: int = 0
    #: the URL the job was submitted to (webhook links point there)
    base_url: str = ""
    #: the API process that holds the job's blobs (embedded mode; ``None`` when shared)
    node: str | None = None
    images: list[ImageRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["images"] = [i.to_json() for i in self.images]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "JobRecord":
        names = {f.name for f in fields(cls)}
        rec = cls(**{k: v for k, v in d.items() if k in names and k != "images"})
        rec.images = [ImageRecord.from_json(i) for i in d.get("images") or []]
        return rec
