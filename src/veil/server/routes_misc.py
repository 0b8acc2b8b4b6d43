"""Synchronous ``/anonymize`` and ``/render``, plus ``/health``, ``/options``, ``/formats`` and ``/models``."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

import veil
from veil.detection.types import ALL_KINDS, Detection
from veil.imageio.formats import describe_all
from veil.pipeline.options import describe_options
from veil.server.app import caller_if_authorized, get_state, principal
from veil.server.jobs import Principal, detection_counts
from veil.server.jsonfield import load_json
from veil.server.problems import Problem, field_error
from veil.server.routes_jobs import _ERRORS, parse_options, reject_unknown_fields
from veil.server.uploads import EXTENSIONS, Part, UploadLimits, check_image, read_multipart

router = APIRouter(prefix="/api/v1")

REPORT_HEADER = "X-Veil-Report"
_MAX_REPORT_HEADER = 6000

_IMAGE_OUT = {200: {"description": "The anonymized image; the report is in X-Veil-Report", "content": {"image/*": {}}}}


def _single_form(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": fields}},
                "image/*": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }


def report_header(result: Any) -> str:
    """The report as compact ASCII JSON, cut down to the counts if it is too long for a header."""
    try:
        report = result.report.to_json()
    except Exception:  # noqa: BLE001
        report = {}
    text = json.dumps(report, separators=(",", ":"), ensure_ascii=True, default=str)
    if len(text) > _MAX_REPORT_HEADER:
        text = json.dumps({"detections": detection_counts(result.report), "truncated": True}, separators=(",", ":"))
    return text


def _image_response(result: Any, stem: str) -> Response:
    ext = EXTENSIONS.get(result.format, result.format or "bin")
    return Response(
        bytes(result.data),
        media_type=result.content_type,
        headers={
            REPORT_HEADER: report_header(result),
            "Content-Disposition": f'inline; filename="{stem}.{ext}"',
            "Cache-Control": "no-store",
        },
    )


async def _read_single(request: Request, extra_fields: set[str]) -> tuple[Part, dict[str, str | None]]:
    """One image from a multipart ``file`` part, or the raw body (``Content-Type: image/*``)."""
    state = get_state(request)
    lim = state.config.limits
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/"):
        form = await read_multipart(
            request,
            UploadLimits(
                min(lim.max_request_bytes, lim.max_file_bytes + 4 * 1024 * 1024), lim.max_file_bytes, 1, file_field="file"
            ),
        )
        reject_unknown_fields(form, {"file", "options"} | extra_fields)
        files = form.files("file")
        if not files:
            raise Problem(422, "send the image in a 'file' part", slug="validation-error",
                          errors=[field_error("file", "an image is required")])
        return files[0], {name: form.field(name) for name in {"options"} | extra_fields}
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > lim.max_file_bytes:
            raise Problem(413, "the image exceeds the upload limit", slug="payload-too-large")
    return Part("file", None, ctype or None, bytes(body)), {}


@router.post(
    "/anonymize",
    tags=["images"],
    summary="Anonymize one image synchronously",
    openapi_extra=_single_form(
        {"file": {"type": "string", "format": "binary"}, "options": {"type": "string", "description": "JSON object"}}
    ),
    responses={**_IMAGE_OUT, **_ERRORS},
    response_class=Response,
)
async def anonymize(
    request: Request,
    options: str | None = Query(None, description="JSON options (for raw-body uploads)"),
    who: Principal = Depends(principal),
) -> Response:
    state = get_state(request)
    part, fields = await _read_single(request, set())
    await run_in_threadpool(check_image, part, None, state.config.limits.image_limits(), "file")
    opts = parse_options(fields.get("options") if fields.get("options") is not None else options)
    result = await run_in_threadpool(state.jobs.run_sync, part.data, opts, who, event="anonymize")
    return _image_response(result, "anonymized")


def parse_regions(raw: str | None, max_regions: int) -> list[Detection]:
    if raw is None or not raw.strip():
        raise Problem(422, "send 'regions': a JSON list of {target, box}", slug="validation-error",
                      errors=[field_error("regions", "required")])
    data = load_json(raw, "regions", "invalid-regions")
    if not isinstance(data, list):
        raise Problem(422, "regions must be a JSON list", slug="invalid-regions",
                      errors=[field_error("regions", "must be a list")])
    if len(data) > max_regions:
        raise Problem(422, f"at most {max_regions} regions", slug="invalid-regions",
                      errors=[field_error("regions", f"at most {max_regions} regions")])
    out: list[Detection] = []
    errors = []
    for i, item in enumerate(data):
        where = f"regions[{i}]"
        if not isinstance(item, dict):
            errors.append(field_error(where, "must be an object with target and box"))
            continue
        unknown = set(item) - {"target", "box", "score"}
        if unknown:
            errors.append(field_error(where, f"unknown field(s): {', '.join(sorted(unknown))}"))
        target = item.get("target")
        if target not in ALL_KINDS:
            errors.append(field_error(f"{where}.target", f"must be one of {', '.join(ALL_KINDS)}"))
        box = item.get("box")
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
        ):
            errors.append(field_error(f"{where}.box", "must be [x1, y1, x2, y2] numbers"))
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        if x2 <= x1 or y2 <= y1:
            errors.append(field_error(f"{where}.box", "needs x2 > x1 and y2 > y1"))
            continue
        if target in ALL_KINDS:
            out.append(Detection(target=target, score=1.0, box=(x1, y1, x2, y2), source="manual"))
    if errors:
        raise Problem(422, "invalid regions", slug="invalid-regions", errors=errors)
    return out


@router.post(
    "/render",
    tags=["images"],
    summary="Render exactly the given regions (manual corrections); nothing is detected or stored",
    openapi_extra=_single_form(
        {
            "file": {"type": "string", "format": "binary"},
            "regions": {"type": "string", "description": 'JSON list: [{"target": "face", "box": [x1, y1, x2, y2]}]'},
            "options": {"type": "string", "description": "JSON object"},
        }
    ),
    responses={**_IMAGE_OUT, **_ERRORS},
    response_class=Response,
)
async def render(request: Request, who: Principal = Depends(principal)) -> Response:
    state = get_state(request)
    if not request.headers.get("content-type", "").lower().startswith("multipart/"):
        raise Problem(415, "send multipart/form-data with 'file' and 'regions'", slug="unsupported-media-type")
    part, fields = await _read_single(request, {"regions"})
    regions = parse_regions(fields.get("regions"), state.config.limits.max_regions)
    await run_in_threadpool(check_image, part, None, state.config.limits.image_limits(), "file")
    opts = parse_options(fields.get("options"))
    result = await run_in_threadpool(state.jobs.run_sync, part.data, opts, who, event="render", regions=regions)
    return _image_response(result, "rendered")


@router.get("/health", tags=["server"], summary="Liveness and auth mode; queue and limits for authorized callers")
async def health(request: Request) -> dict[str, Any]:
    """Public: whether the server is up (and if keys are needed). Queue counts, held
    bytes and limits only for a valid key, or anyone in open local mode."""
    state = get_state(request)
    pipeline_ok = await run_in_threadpool(state.pipeline.available)
    public: dict[str, Any] = {
        "status": "ok" if pipeline_ok else "degraded",
        "auth": "keys" if await run_in_threadpool(state.auth_required) else "open",
        "pipeline": "ready" if pipeline_ok else "unavailable",
    }
    if await run_in_threadpool(caller_if_authorized, request) is None:
        return public
    lim = state.config.limits
    # off the event loop: in the distributed mode both ask Redis, which may be slow or away
    stats = await run_in_threadpool(state.queue.stats)
    held = await run_in_threadpool(lambda: state.jobs.held_bytes)
    if not state.jobs.runs_tasks and not stats.get("workers"):  # distributed: jobs would only wait
        public = {**public, "status": "degraded", "warning": "no veil worker is connected: jobs wait in the queue"}
    return {
        **public,
        "version": veil.__version__,
        "queue": stats,
        "held_bytes": held,
        "ttl_seconds": state.config.ttl,
        "limits": {
            "max_request_bytes": lim.max_request_bytes,
            "max_file_bytes": lim.max_file_bytes,
            "max_video_bytes": lim.max_video_bytes,
            "max_images_per_job": lim.max_images_per_job,
            "max_pixels": lim.max_pixels,
            "max_request_pixels": lim.max_request_pixels,
            "max_pixels_per_byte": lim.max_pixels_per_byte,
            "max_pixels_per_byte_lossless": lim.max_pixels_per_byte_lossless,
            "max_decode_seconds": lim.max_decode_seconds,
            "max_regions": lim.max_regions,
        },
    }


@router.get("/options", tags=["server"], summary="Every anonymization option: type, default, choices, range, help")
async def options_schema() -> dict[str, Any]:
    """Public, like ``/health``: the web page builds its controls from it. The same
    description the CLI help is generated from (the ``Options`` fields' metadata)."""
    return {"options": describe_options()}


@router.get("/formats", tags=["server"], summary="Image and video formats accepted (and written)")
async def formats_list() -> dict[str, Any]:
    """Public: the format records (name, extensions, MIME types) uploads are checked
    against; the web page's file picker accepts exactly these."""
    return {"formats": describe_all()}


def list_models() -> dict[str, Any]:
    from veil.models import MODELS, default_store
    try:
        store = default_store()
    except Exception:  # noqa: BLE001 - readiness is best effort
        store = None
    out = []
    for spec in MODELS:
        ready, detail = None, "unknown"
        if store is not None:
            try:
                st = store.status(spec.name)
                ready, detail = bool(st.ready), str(st.detail)
            except Exception as exc:  # noqa: BLE001
                ready, detail = False, str(exc)
        out.append(
            {
                "name": spec.name,
                "targets": list(spec.targets),
                "license": spec.license,
                "permissive": spec.permissive,
                "source": spec.source,
                "description": spec.description,
                "ready": ready,
                "detail": detail,
            }
        )
    return {"models": out}


@router.get("/models", tags=["server"], summary="Models, their licences and whether they are ready")
async def models(who: Principal = Depends(principal)) -> dict[str, Any]:
    return await run_in_threadpool(list_models)
