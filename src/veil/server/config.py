"""Server configuration: one dataclass built from CLI flags and ``VEIL_SERVER_*`` env vars.

Auth mode is derived from the bind address: bound to loopback (127.0.0.1, ::1,
localhost) with no API keys created → *open local mode* (no key needed; webhooks to
loopback and private addresses are allowed). Bound anywhere else, or once a key exists,
every API call needs a valid key. ``require_keys`` forces either way.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from veil.imageio.limits import Limits

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost"})


def default_data_dir() -> Path:
    """``$VEIL_HOME/server`` when ``VEIL_HOME`` is set, else ``~/.local/share/veil/server``."""
    env = os.environ.get("VEIL_HOME")
    if env:
        return Path(env).expanduser() / "server"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "veil" / "server"


def is_loopback_host(host: str) -> bool:
    h = host.strip().strip("[]").lower()
    if h in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2) // 2))


@dataclass
class ServerLimits:
    """Upload and job limits; each one refused with a clear 4xx."""

    #: Whole request body (all parts together) → 413.
    max_request_bytes: int = 256 * 1024 * 1024
    #: One uploaded image → 413.
    max_file_bytes: int = 100 * 1024 * 1024
    #: Images in one job → 413.
    max_images_per_job: int = 100
    #: Pixels of one image (width x height, read from its header) → 413.
    max_pixels: int = 150_000_000
    #: Pixels of all the images of one request together (from their headers) → 413.
    max_request_pixels: int = 1_000_000_000
    #: Pixels per byte of file an image may announce (the ratio rule, images over 1 MP)
    #: → 413: for JPEG and lossy WEBP, and for the lossless formats and HEIF, which code
    #: flat areas in almost nothing (see ``veil.imageio.limits`` for how these were chosen).
    max_pixels_per_byte: int = 1000
    max_pixels_per_byte_lossless: int = 100_000
    #: Seconds decoding one image may take → that image fails (413 in a synchronous call).
    max_decode_seconds: float = 30.0
    #: Queued + processing jobs per key (or per server in open mode when set) → 429.
    max_concurrent_jobs_per_key: int = 4
    #: Regions in one ``/render`` call → 422.
    max_regions: int = 2000
    #: Bytes of originals + results held in memory by all jobs; above it new jobs get
    #: 503 + Retry-After until downloads, deletes or expiry free room.
    max_held_bytes: int = 2 * 1024 * 1024 * 1024
    #: One video upload (all videos of one request together) → 413. Videos are not
    #: held in memory: they are streamed into encrypted spool files in the data dir.
    max_video_bytes: int = 2048 * 1024 * 1024
    #: Bytes of encrypted spool files (video uploads and results) on disk; above it new
    #: video jobs get 503 + Retry-After until results are downloaded, deleted or expire.
    max_spool_bytes: int = 16 * 1024 * 1024 * 1024

    def image_limits(self) -> "Limits":
        """The :class:`veil.imageio.Limits` every upload is held to (header and decode)."""
        from veil.imageio.limits import Limits

        return Limits(
            max_bytes=self.max_file_bytes,
            max_pixels=self.max_pixels,
            max_pixels_per_byte=self.max_pixels_per_byte,
            max_pixels_per_byte_lossless=self.max_pixels_per_byte_lossless,
            max_decode_seconds=self.max_decode_seconds,
        )


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = field(default_factory=default_data_dir)
    #: Seconds results live after their job ends (or after creation while pending).
    ttl: float = 3600.0
    #: Seconds between sweeps of expired jobs; ``None`` = ``min(30, ttl / 4)``.
    sweep_interval: float | None = None
    workers: int = field(default_factory=_default_workers)
    #: Jobs waiting for a worker; a full queue answers 503 + Retry-After.
    queue_size: int = 64
    #: Concurrent synchronous ``/anonymize`` and ``/render`` calls.
    sync_concurrency: int | None = None
    #: Seconds a synchronous call waits for a free slot before 503.
    sync_wait: float = 30.0
    limits: ServerLimits = field(default_factory=ServerLimits)
    #: ``None``: derived from the bind address and whether keys exist (see module doc).
    require_keys: bool | None = None
    #: Webhooks to private/loopback/link-local/metadata addresses (off: only public ones,
    #: plus loopback and private ranges in open local mode; metadata is never allowed
    #: unless this is set).
    allow_private_webhooks: bool = False
    webhook_timeout: float = 10.0
    #: Retries back off exponentially from this delay...
    webhook_backoff: float = 1.0
    #: ...and stop after this many seconds since the first attempt.
    webhook_max_seconds: float = 600.0
    #: Webhook attempts at once (at most 2 of them to one receiver); each attempt,
    #: answer included, ends within ``webhook_timeout`` seconds.
    webhook_concurrency: int = 8
    #: Mount ``veil/web/static`` at ``/`` when it exists.
    serve_web: bool = True
    #: Quota for keys created without one (images per UTC day; 0 = unlimited).
    default_quota_per_day: int = 0
    #: Distributed mode: job records, uploads and results in this Redis
    #: (``redis://[:password@]host:port/db`` or ``rediss://``), tasks on its RQ queues.
    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    #: Where API keys, usage counters and the audit log live: a ``postgresql://`` URL
    #: (shared by several API nodes) or ``None`` = the SQLite file in ``data_dir``
    #: (``db_path``). Job records and images never go there. Not in ``repr`` (password).
    database: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser()
        if isinstance(self.limits, Mapping):
            self.limits = ServerLimits(**self.limits)
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        if self.ttl <= 0:
            raise ValueError("ttl must be > 0")

    @property
    def loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def effective_sweep_interval(self) -> float:
        if self.sweep_interval is not None:
            return max(0.05, float(self.sweep_interval))
        return max(0.05, min(30.0, self.ttl / 4))

    @property
    def effective_sync_concurrency(self) -> int:
        return self.sync_concurrency or self.workers

    @property
    def db_path(self) -> Path:
        return self.data_dir / "veil-server.sqlite3"

    @property
    def base_url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "ServerConfig":
        """Defaults ← ``VEIL_SERVER_<FIELD>`` env vars ← explicit (non-``None``) overrides."""
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        limit_kwargs: dict[str, Any] = {}
        types = {f.name: f for f in dataclasses.fields(cls)}
        limit_types = {f.name: f for f in dataclasses.fields(ServerLimits)}
        for name in types:
            raw = env.get(f"VEIL_SERVER_{name.upper()}")
            if raw is not None and name != "limits":
                kwargs[name] = _coerce(name, raw, cls)
        for name in limit_types:
            raw = env.get(f"VEIL_SERVER_{name.upper()}")
            if raw is not None:
                limit_kwargs[name] = float(raw) if name in _FLOAT_LIMITS else int(raw)
        for key, value in overrides.items():
            if value is None:
                continue
            if key in limit_types:
                limit_kwargs[key] = value
            elif key in types:
                kwargs[key] = value
            else:
                raise TypeError(f"unknown server setting {key!r}")
        if limit_kwargs:
            base = kwargs.get("limits") or ServerLimits()
            kwargs["limits"] = dataclasses.replace(base, **limit_kwargs)
        if not kwargs.get("database"):  # VEIL_SERVER_DATABASE, --database, else VEIL_DATABASE_URL
            kwargs["database"] = env.get("VEIL_DATABASE_URL") or None
        if not kwargs.get("redis_url"):  # VEIL_SERVER_REDIS_URL, --redis, else VEIL_REDIS_URL
            kwargs["redis_url"] = env.get("VEIL_REDIS_URL") or None
        return cls(**kwargs)


_FLOAT_LIMITS = {"max_decode_seconds"}
_BOOL_FIELDS = {"allow_private_webhooks", "serve_web"}
_FLOAT_FIELDS = {"ttl", "sweep_interval", "sync_wait", "webhook_timeout", "webhook_backoff", "webhook_max_seconds"}
_INT_FIELDS = {"port", "workers", "queue_size", "sync_concurrency", "default_quota_per_day", "webhook_concurrency"}


def _coerce(name: str, raw: str, cls: type) -> Any:
    if name in _BOOL_FIELDS:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if name == "require_keys":
        v = raw.strip().lower()
        return None if v in ("", "auto") else v in ("1", "true", "yes", "on")
    if name in _FLOAT_FIELDS:
        return float(raw)
    if name in _INT_FIELDS:
        return int(raw)
    if name == "data_dir":
        return Path(raw)
    return raw


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0700: only this user can read it."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
