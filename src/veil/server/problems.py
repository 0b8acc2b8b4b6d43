"""RFC 9457 problem details: every API error is ``application/problem+json``.

Shape: ``{"type", "title", "status", "detail", "errors": [{"field", "message"}]}``.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from veil.errors import ImageError, ModelError, OptionsError, VeilError
from veil.server.errors import ServiceError

log = logging.getLogger("veil.server")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://veil.dev/problems/"


class Problem(Exception):
    """Raise anywhere in a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        errors: Iterable[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(detail)
        self.status = int(status)
        self.detail = detail
        self.slug = slug
        self.title = title or _phrase(self.status)
        self.errors = list(errors or [])
        self.headers = dict(headers or {})

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": TYPE_BASE + self.slug if self.slug else "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = self.errors
        return body

    def response(self) -> JSONResponse:
        return JSONResponse(self.to_json(), status_code=self.status, headers=self.headers, media_type=PROBLEM_JSON)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def field_error(field: str | None, message: str) -> dict[str, Any]:
    return {"field": field, "message": message}


def options_problem(exc: OptionsError, prefix: str = "options") -> Problem:
    field = f"{prefix}.{exc.field}" if exc.field else prefix
    return Problem(422, f"Invalid options: {exc}", slug="invalid-options", errors=[field_error(field, str(exc))])


def image_problem(exc: ImageError, field: str | None = None) -> Problem:
    """Map an :class:`ImageError` to 413 (too large / bomb), 415 (unsupported) or 422."""
    status = getattr(exc, "status", None) or getattr(exc, "http_status", None)
    msg = str(exc)
    low = msg.lower()
    if status is None:
        if any(w in low for w in ("too large", "too many pixels", "bomb", "exceeds", "too big")):
            status = 413
        elif any(w in low for w in ("unsupported", "not a supported", "not an image", "unknown format", "cannot identify")):
            status = 415
        else:
            status = 422
    slug = {413: "image-too-large", 415: "unsupported-media-type"}.get(int(status), "invalid-image")
    return Problem(int(status), msg, slug=slug, errors=[field_error(field, msg)] if field else None)


#: each domain error of the job service: (status, slug); the one place they become HTTP
_SERVICE_STATUS: dict[str, tuple[int, str]] = {
    "NotFound": (404, "not-found"),
    "NotReady": (409, "not-ready"),
    "ImageFailed": (409, "image-failed"),
    "NoImages": (409, "no-images"),
    "TooManyJobs": (429, "too-many-jobs"),
    "QuotaExceeded": (429, "quota-exceeded"),
    "Busy": (503, "server-busy"),
    "Unavailable": (503, "unavailable"),
}


def service_problem(exc: ServiceError) -> Problem:
    """The problem document of a job-service error (status and slug from its class)."""
    status, slug = _SERVICE_STATUS.get(type(exc).__name__, (400, "about:blank"))
    slug = getattr(exc, "slug", None) or slug
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return Problem(status, exc.message, slug=slug, headers=headers)


def backend_down_problem() -> Problem:
    """Redis (the distributed mode's store and queue) cannot be reached: retry later."""
    return Problem(503, "the job store is unreachable right now; retry later", slug="unavailable",
                   headers={"Retry-After": "5"})


def install(app: FastAPI) -> None:
    """Register handlers so nothing leaves the API as anything but problem+json."""

    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError):  # noqa: ANN202
        return service_problem(exc).response()

    from veil.server.database import DatabaseError

    @app.exception_handler(DatabaseError)
    async def _database_down(_: Request, exc: DatabaseError):  # noqa: ANN202
        return Problem(503, "the key database is unreachable right now; retry later", slug="unavailable",
                       headers={"Retry-After": "5"}).response()

    try:  # the distributed mode's backend; its outage is a 503, never a 500 or a hang
        from redis.exceptions import RedisError
    except ImportError:  # the embedded mode needs no redis package
        pass
    else:

        @app.exception_handler(RedisError)
        async def _redis_down(_: Request, exc: Exception):  # noqa: ANN202
            # only the class is logged: redis's messages may quote a command's arguments
            log.warning("Redis call failed: %s", type(exc).__name__)
            return backend_down_problem().response()

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem):  # noqa: ANN202
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):  # noqa: ANN202
        detail = exc.detail if isinstance(exc.detail, str) else _phrase(exc.status_code)
        return Problem(exc.status_code, detail, headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):  # noqa: ANN202
        errors = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
            errors.append(field_error(".".join(loc) or None, err.get("msg", "invalid")))
        return Problem(422, "The request is not valid.", slug="validation-error", errors=errors).response()

    @app.exception_handler(OptionsError)
    async def _options(_: Request, exc: OptionsError):  # noqa: ANN202
        return options_problem(exc).response()

    @app.exception_handler(ImageError)
    async def _image(_: Request, exc: ImageError):  # noqa: ANN202
        return image_problem(exc).response()

    @app.exception_handler(ModelError)
    async def _model(_: Request, exc: ModelError):  # noqa: ANN202
        return Problem(503, str(exc), slug="model-unavailable").response()

    @app.exception_handler(VeilError)
    async def _veil(_: Request, exc: VeilError):  # noqa: ANN202
        return Problem(400, str(exc)).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):  # noqa: ANN202
        log.exception("unexpected error", exc_info=exc)
        return Problem(500, "Internal server error.").response()
