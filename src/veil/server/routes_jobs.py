"""``/api/v1/jobs``: asynchronous batches of images."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from veil.errors import OptionsError
from veil.imageio import formats
from veil.pipeline.options import Options
from veil.server.app import get_state, principal
from veil.server.jobs import Principal, Upload
from veil.server.jsonfield import load_json
from veil.server.problems import PROBLEM_JSON, Problem, field_error, options_problem
from veil.server.ranges import ranged_response
from veil.server.config import ServerLimits
from veil.server.uploads import Form, UploadLimits, check_image, header_pixels, read_multipart, shred_spools
from veil.server.videojobs import check_video
from veil.server.webhooks import WebhookURLError, check_callback_url

router = APIRouter(prefix="/api/v1", tags=["jobs"])

_PROBLEM = {"content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"description": d, **_PROBLEM}
    for s, d in {
        401: "API key missing or invalid",
        404: "No such job or image (or it expired)",
        413: "Upload, image or pixel count too large",
        415: "Not a supported image",
        422: "Invalid options or fields",
        429: "Quota spent or too many concurrent jobs",
        503: "Queue full; see Retry-After",
    }.items()
}

_JOB_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": f"{formats.LABELS} images and {formats.VIDEO_LABELS} videos "
                                           "(content is sniffed, names ignored; GET /api/v1/formats lists them)",
                        },
                        "options": {"type": "string", "description": "JSON object of veil options"},
                        "callback_url": {"type": "string", "format": "uri"},
                        "delete_after_download": {"type": "boolean", "default": False},
                    },
                }
            }
        },
    }
}

_IMAGE_RESPONSE = {
    200: {"description": "The anonymized image or video", "content": {"image/*": {}, "video/*": {}}},
    206: {"description": "The requested byte range (Range: bytes=a-b, a- or -n)", "content": {"image/*": {}, "video/*": {}}},
    416: {"description": "The range starts past the end (Content-Range: bytes */size)", **_PROBLEM},
}


def parse_options(raw: str | None, field: str = "options") -> Options:
    if raw is None or not raw.strip():
        return Options()
    data = load_json(raw, field, "invalid-options")
    if not isinstance(data, dict):
        raise Problem(422, f"{field} must be a JSON object", slug="invalid-options",
                      errors=[field_error(field, "must be a JSON object")])
    try:
        return Options.from_mapping(data)
    except OptionsError as exc:
        raise options_problem(exc, field) from None


def parse_bool(raw: str | None, field: str) -> bool:
    if raw is None or raw.strip() == "":
        return False
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise Problem(422, f"{field} must be true or false", slug="validation-error", errors=[field_error(field, "not a boolean")])


def reject_unknown_fields(form: Form, allowed: set[str]) -> None:
    unknown = sorted(form.names() - allowed)
    if unknown:
        raise Problem(
            422,
            f"unknown form field(s): {', '.join(unknown)}; expected {', '.join(sorted(allowed))}",
            slug="validation-error",
            errors=[field_error(n, "unknown field") for n in unknown],
        )


def _check_all(parts: list, lim: ServerLimits) -> None:
    """Every image's header (415/413), then the request's pixel budget: the sum over its images."""
    image_limits = lim.image_limits()
    total = 0
    for i, p in enumerate(parts):
        if p.spool is not None:  # a video: its header here, the rest when it runs (a per-file failure)
            check_video(p, i)
            continue
        check_image(p, i, image_limits)
        total += header_pixels(p)
        if total > lim.max_request_pixels:
            msg = (f"the images of this request announce more than {lim.max_request_pixels:,} pixels together "
                   f"(the per-request pixel budget), {total:,} up to files[{i}]; send them in several jobs")
            raise Problem(413, msg, slug="request-pixels", errors=[field_error(f"files[{i}]", msg)])


@router.post(
    "/jobs",
    status_code=202,
    summary="Submit images for anonymization",
    openapi_extra=_JOB_FORM,
    responses=_ERRORS,
)
async def create_job(request: Request, who: Principal = Depends(principal)) -> JSONResponse:
    state = get_state(request)
    lim = state.config.limits
    form = await read_multipart(
        request,
        UploadLimits(lim.max_request_bytes, lim.max_file_bytes, lim.max_images_per_job, file_field="files",
                     max_video_bytes=lim.max_video_bytes,
                     video_sink=state.jobs.spool.create if state.jobs.spool is not None else None),
    )
    try:  # from here on, the videos' spool files are shredded unless a job takes them
        return await _create_job(request, state, form, who)
    except BaseException:
        shred_spools(form)
        raise


async def _create_job(request: Request, state: Any, form: Form, who: Principal) -> JSONResponse:
    lim = state.config.limits
    reject_unknown_fields(form, {"files", "options", "callback_url", "delete_after_download"})
    parts = form.files("files")
    if not parts:
        raise Problem(422, "send at least one image in 'files'", slug="validation-error",
                      errors=[field_error("files", "at least one image is required")])
    options = parse_options(form.field("options"))
    callback_url = (form.field("callback_url") or "").strip() or None
    delete_after = parse_bool(form.field("delete_after_download"), "delete_after_download")
    if callback_url:
        try:
            await run_in_threadpool(
                check_callback_url,
                callback_url,
                allow_private=state.config.allow_private_webhooks,
                allow_local=state.config.loopback,
            )
        except WebhookURLError as exc:
            raise Problem(422, str(exc), slug="invalid-callback-url", errors=[field_error("callback_url", str(exc))]) from None
    await run_in_threadpool(_check_all, parts, lim)
    uploads = [Upload(p.data, p.filename, spool=p.spool) for p in parts]
    del form, parts
    body = await run_in_threadpool(
        state.jobs.create,
        uploads,
        options,
        who,
        callback_url=callback_url,
        delete_after_download=delete_after,
        base_url=str(request.base_url),
    )
    return JSONResponse(body, status_code=202, headers={"Location": body["links"]["self"]})


@router.get("/jobs/{job_id}", summary="Job status", responses=_ERRORS)
async def get_job(request: Request, job_id: str = Path(max_length=64), who: Principal = Depends(principal)) -> dict:
    return await run_in_threadpool(get_state(request).jobs.status, job_id, who)


@router.get("/jobs/{job_id}/images/{n}", summary="Download one anonymized image", responses={**_IMAGE_RESPONSE, **_ERRORS},
            response_class=Response)
async def get_image(
    request: Request,
    job_id: str = Path(max_length=64),
    n: int = Path(ge=0, le=100_000),
    token: str | None = Query(None, max_length=256, description="From POST .../images/{n}/link: no API key needed"),
) -> Response:
    """The result; ``Range`` requests are answered with 206 (players seek, downloads resume)."""
    state = get_state(request)
    jobs = state.jobs
    who = await run_in_threadpool(_link_caller, state, token, job_id, n) if token else principal(request)
    data, ctype, name, sha = await run_in_threadpool(jobs.download, job_id, n, who)
    return ranged_response(
        data,
        media_type=ctype,
        # through a link, the page that asked for it names the file (<a download>), and a
        # filename here would override it
        headers={"Content-Disposition": "inline" if token else f'inline; filename="{name}"', "Cache-Control": "no-store"},
        range_header=request.headers.get("range"),
        if_range=request.headers.get("if-range"),
        etag=f'"{sha}"' if sha else None,
        background=BackgroundTask(jobs.downloaded_image, job_id, n),
    )


def _link_caller(state: Any, token: str, job_id: str, n: int) -> Principal:
    """The job's owner, when ``token`` is a valid link to result ``n`` of ``job_id``."""
    grant = state.jobs.tokens.verify(token, job_id, n)
    key = state.keys.get(grant.key_id) if grant is not None and grant.key_id else None
    if grant is None or (grant.key_id and (key is None or key.revoked)):
        raise Problem(401, "the download link is not valid or has expired; ask for a new one", slug="unauthorized")
    return Principal(key)


@router.post("/jobs/{job_id}/images/{n}/link", summary="A short-lived download URL for one result", responses=_ERRORS)
async def create_link(
    request: Request,
    job_id: str = Path(max_length=64),
    n: int = Path(ge=0, le=100_000),
    who: Principal = Depends(principal),
) -> dict:
    """``{"url", "expires_at"}``: the URL opens this one result without an API key (for
    ``<video src>`` and plain links, which cannot send one) until ``expires_at`` (an hour
    at most, never past the job's expiry)."""
    return await run_in_threadpool(get_state(request).jobs.link, job_id, n, who)


@router.get(
    "/jobs/{job_id}/archive",
    summary="Download every finished image as a ZIP",
    responses={200: {"description": "ZIP of 0001.jpg, 0002.png…", "content": {"application/zip": {}}}, **_ERRORS},
    response_class=Response,
)
async def get_archive(
    request: Request,
    job_id: str = Path(max_length=64),
    names: str = Query("index", pattern="^(index|original)$",
                       description="'original' appends the sanitized original base name: 0001_beach.jpg"),
    who: Principal = Depends(principal),
) -> StreamingResponse:
    jobs = get_state(request).jobs
    stream = await run_in_threadpool(jobs.archive, job_id, who, names == "original")
    return StreamingResponse(
        stream,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="veil-{job_id}.zip"', "Cache-Control": "no-store"},
        background=BackgroundTask(jobs.downloaded_archive, job_id),
    )


@router.delete("/jobs/{job_id}", status_code=204, summary="Delete a job and all its images now", responses=_ERRORS,
               response_class=Response)
async def delete_job(request: Request, job_id: str = Path(max_length=64), who: Principal = Depends(principal)) -> Response:
    await run_in_threadpool(get_state(request).jobs.delete_job, job_id, who)
    return Response(status_code=204)


@router.delete("/jobs/{job_id}/images/{n}", status_code=204, summary="Delete one image now", responses=_ERRORS,
               response_class=Response)
async def delete_image(
    request: Request,
    job_id: str = Path(max_length=64),
    n: int = Path(ge=0, le=100_000),
    who: Principal = Depends(principal),
) -> Response:
    await run_in_threadpool(get_state(request).jobs.delete_image, job_id, n, who)
    return Response(status_code=204)
