"""The API server: ``create_app(config)`` builds a FastAPI app with its own store,
worker pool, webhook sender and expiry sweeper (started and stopped with the app).
"""

from __future__ import annotations

import logging
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request

import veil
from veil.server.audit import AuditLog
from veil.server.config import ServerConfig, ensure_private_dir
from veil.server.database import open_server_database
from veil.server.headers import SecurityHeaders
from veil.server.jobs import JobManager, Pipeline, Principal
from veil.server.keys import KeyManager
from veil.server.problems import Problem, install
from veil.server.blobs import BlobStore, MemoryBlobStore
from veil.server.queue import TaskQueue, ThreadTaskQueue
from veil.server.repository import JobRepository, SqliteJobRepository
from veil.server.spool import SpoolDir
from veil.server.store import Store
from veil.server.tokens import DownloadTokens
from veil.server.webhooks import WebhookSender, server_secret

log = logging.getLogger("veil.server")

STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "static"

PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string", "nullable": True}, "message": {"type": "string"}},
            },
        },
    },
    "required": ["type", "title", "status"],
}


@dataclass
class ServerState:
    config: ServerConfig
    store: Store
    keys: KeyManager
    audit: AuditLog
    queue: TaskQueue
    webhooks: WebhookSender
    jobs: JobManager
    pipeline: Pipeline
    repo: JobRepository
    blobs: BlobStore

    def auth_required(self) -> bool:
        """Keys needed unless bound to loopback with no active key (open local mode)."""
        if self.config.require_keys is not None:
            return self.config.require_keys
        return not self.config.loopback or self.keys.has_active_keys()


def build_state(
    config: ServerConfig,
    *,
    pipeline: Callable[..., Any] | None = None,
    queue: TaskQueue | None = None,
) -> ServerState:
    """Embedded mode (SQLite records, blobs in memory, a thread pool), or the distributed
    mode when ``config.redis_url`` is set (records, blobs and tasks in Redis, RQ workers)."""
    ensure_private_dir(config.data_dir)
    server_secret(config.data_dir)  # created once, 0600
    store = Store(config.db_path)
    shared = open_server_database(config) if config.database else store  # keys, usage, audit
    keys = KeyManager(shared)
    audit = AuditLog(shared)
    # video uploads arrive in encrypted spool files; leftovers of an earlier process
    # (unreadable without its key) go now
    spool = SpoolDir(config.data_dir / "spool")
    notify = dist = None
    if config.redis_url:
        from veil.server.distributed import distributed_parts

        dist = distributed_parts(config)
        repo, blobs, q, notify = dist.repo, dist.blobs, dist.queue, dist.notify
    else:
        # each process marks its jobs; a job is forgotten only once its process is gone
        repo = SqliteJobRepository(store, node="n_" + secrets.token_hex(6),
                                   stale_after=max(30.0, 3 * config.effective_sweep_interval))  # fmt: skip
        blobs = MemoryBlobStore()
        q = queue or ThreadTaskQueue(config.workers, config.queue_size)
    webhooks = WebhookSender(
        allow_private=config.allow_private_webhooks,
        allow_local=config.loopback,
        timeout=config.webhook_timeout,
        backoff=config.webhook_backoff,
        max_seconds=config.webhook_max_seconds,
        concurrency=config.webhook_concurrency,
    )
    pipe = Pipeline(config, pipeline)
    jobs = JobManager(config, repo, blobs, keys, audit, q, webhooks, pipe, spool=spool, notify=notify,
                      runs_tasks=not config.redis_url)  # fmt: skip
    webhooks.on_result = jobs.webhook_result
    if dist is not None:  # every node of one Redis signs and verifies alike
        jobs.anonymous_secret = dist.secret("webhook")
        jobs.tokens = DownloadTokens(dist.secret("links").encode())
    return ServerState(config, store, keys, audit, q, webhooks, jobs, pipe, repo, blobs)


def create_app(
    config: ServerConfig | None = None,
    *,
    pipeline: Callable[..., Any] | None = None,
    queue: TaskQueue | None = None,
) -> FastAPI:
    """The veil API (and the web page, when ``veil/web/static`` exists).

    ``pipeline`` replaces ``veil.pipeline.core.anonymize_bytes`` and ``queue`` the
    in-process :class:`ThreadTaskQueue` (e.g. for a distributed backend).
    """
    config = config or ServerConfig.from_env()
    state = build_state(config, pipeline=pipeline, queue=queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        state.jobs.start()
        try:
            yield
        finally:
            state.jobs.stop()
            state.store.close()
            if state.keys.store is not state.store:
                state.keys.store.close()

    app = FastAPI(
        title="veil",
        version=veil.__version__,
        summary="Find faces, people and licence plates in photos and hide them.",
        description=(
            "Errors are RFC 9457 `application/problem+json`. Authenticate with "
            "`Authorization: Bearer <key>` or `X-API-Key: <key>`, unless the server runs in "
            "open local mode (bound to loopback with no keys)."
        ),
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
        redoc_url=None,
    )
    app.state.veil = state
    install(app)
    app.add_middleware(SecurityHeaders)

    from veil.server import routes_jobs, routes_misc

    app.include_router(routes_jobs.router)
    app.include_router(routes_misc.router)

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    if config.serve_web and STATIC_DIR.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/", StaticFiles(directory=str(STATIC_DIR), html=True), name="web")
    return app


def get_state(request: Request) -> ServerState:
    return request.app.state.veil


def caller_if_authorized(request: Request) -> Principal | None:
    """The caller as :func:`principal` sees it, or ``None`` where it would answer 401."""
    try:
        return principal(request)
    except Problem as exc:
        if exc.status == 401:
            return None
        raise


def principal(request: Request) -> Principal:
    """FastAPI dependency: the calling key (or nobody in open local mode), else 401."""
    state = get_state(request)
    token = None
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            token = value.strip()
    token = token or (request.headers.get("x-api-key") or "").strip() or None
    challenge = {"WWW-Authenticate": 'Bearer realm="veil"'}
    if token:
        key = state.keys.authenticate(token)
        if key is None:
            raise Problem(401, "the API key is not valid or has been revoked", slug="unauthorized", headers=challenge)
        return Principal(key)
    if state.auth_required():
        raise Problem(
            401,
            "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            slug="unauthorized",
            headers=challenge,
        )
    return Principal(None)
