"""Multipart uploads parsed in memory, with limits enforced while the body streams in.

Starlette's ``request.form()`` spools file parts above 1 MB to temporary files on disk;
veil promises that nothing of an upload touches disk in the clear, so the body is parsed
here with ``python_multipart``'s streaming parser into ``bytes`` only. Size limits stop
the read early (413) instead of buffering an oversized body first. A file part whose
first bytes are a video (when the caller passes ``video_sink``) is streamed as it
arrives into an encrypted spool file instead (:mod:`veil.server.spool`).
"""

from __future__ import annotations

import io
import re
import unicodedata
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from PIL import Image
from starlette.requests import ClientDisconnect, Request

import veil.imageio.codecs  # noqa: F401  (the header checks open HEIF too)
from veil.imageio import formats
from veil.server.problems import Problem, field_error

#: Formats accepted as input, as sniffed from the first bytes (never from names).
ACCEPTED_FORMATS = formats.NAMES
#: How errors name the accepted formats.
FORMAT_NAMES = formats.LABELS
#: Archive suffix per format (no dot).
EXTENSIONS = {f.name: f.extension.lstrip(".") for f in formats.IMAGE_FORMATS}


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes
    #: a video part: its bytes are in this encrypted spool file (``data`` is empty)
    spool: Any = None


@dataclass
class Form:
    parts: list[Part] = field(default_factory=list)

    def files(self, name: str) -> list[Part]:
        return [p for p in self.parts if p.name == name]

    def field(self, name: str) -> str | None:
        """The text of a non-file field (or of a file part sent for it), or ``None``."""
        for p in self.parts:
            if p.name == name:
                try:
                    return p.data.decode("utf-8")
                except UnicodeDecodeError:
                    raise Problem(422, f"field {name!r} must be UTF-8 text", errors=[field_error(name, "not UTF-8")]) from None
        return None

    def names(self) -> set[str]:
        return {p.name for p in self.parts}


@dataclass
class UploadLimits:
    max_request_bytes: int
    max_file_bytes: int
    max_files: int
    max_field_bytes: int = 1024 * 1024
    max_fields: int = 32
    file_field: str = "files"
    #: bytes of every video part together (spooled, not counted in ``max_request_bytes``)
    max_video_bytes: int = 0
    #: opens a new encrypted spool file for a video part; ``None``: videos are not spooled
    video_sink: Callable[[], Any] | None = None


async def read_multipart(request: Request, limits: UploadLimits) -> Form:
    """Parse a ``multipart/form-data`` body into memory, enforcing ``limits``."""
    ctype = request.headers.get("content-type", "")
    kind, params = parse_options_header(ctype)
    if kind != b"multipart/form-data":
        raise Problem(415, "send the request as multipart/form-data", slug="unsupported-media-type")
    boundary = params.get(b"boundary")
    if not boundary:
        raise Problem(400, "multipart body without a boundary", slug="bad-multipart")
    declared = request.headers.get("content-length")
    spooling = limits.video_sink is not None
    ceiling = limits.max_request_bytes + (limits.max_video_bytes if spooling else 0)
    if declared and declared.isdigit() and int(declared) > ceiling:
        raise _too_large(limits)

    form = Form()
    state: dict = {"name": None, "filename": None, "ctype": None, "buf": None, "hname": b"", "hval": b"", "headers": {}}
    counts = {"files": 0, "fields": 0, "spooled": 0}

    def on_part_begin() -> None:
        state.update(name=None, filename=None, ctype=None, buf=bytearray(), headers={}, hname=b"", hval=b"",
                     spool=None, sniffed=False)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hname"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["hval"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["hname"].lower()] = state["hval"]
        state["hname"], state["hval"] = b"", b""

    def on_headers_finished() -> None:
        _, opts = parse_options_header(state["headers"].get(b"content-disposition", b""))
        if b"name" not in opts:
            raise Problem(400, 'a multipart part lacks a Content-Disposition "name"', slug="bad-multipart")
        state["name"] = opts[b"name"].decode("utf-8", "replace")
        if b"filename" in opts:
            state["filename"] = opts[b"filename"].decode("utf-8", "replace")
        ct = state["headers"].get(b"content-type")
        state["ctype"] = ct.decode("latin-1") if ct else None
        if state["name"] == limits.file_field or state["filename"] is not None:
            counts["files"] += 1
            if counts["files"] > limits.max_files:
                raise Problem(
                    413,
                    f"too many images in one request (at most {limits.max_files})",
                    slug="too-many-images",
                    errors=[field_error(limits.file_field, f"at most {limits.max_files} images")],
                )
        else:
            counts["fields"] += 1
            if counts["fields"] > limits.max_fields:
                raise Problem(413, f"too many form fields (at most {limits.max_fields})", slug="too-many-fields")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["spool"] is not None:
            _spool_data(data[start:end])
            return
        buf: bytearray = state["buf"]
        buf += data[start:end]
        is_file = state["name"] == limits.file_field or state["filename"] is not None
        if is_file and spooling and not state["sniffed"] and len(buf) >= _SNIFF_BYTES:
            _sniff_video()
            if state["spool"] is not None:
                return
        cap = limits.max_file_bytes if is_file else limits.max_field_bytes
        if len(buf) > cap:
            what = "an image" if is_file else f"field {state['name']!r}"
            raise Problem(
                413,
                f"{what} exceeds the limit of {_mb(cap)}",
                slug="payload-too-large",
                errors=[field_error(state["name"], f"larger than {_mb(cap)}")],
            )

    def _sniff_video() -> None:
        """Route the part to a spool file if it starts a video (decided once, on its first bytes)."""
        state["sniffed"] = True
        if not _is_video(bytes(state["buf"][:_SNIFF_BYTES])):
            return
        state["spool"] = limits.video_sink()  # type: ignore[misc]
        head, state["buf"] = bytes(state["buf"]), bytearray()
        _spool_data(head)

    def _spool_data(chunk: bytes) -> None:
        counts["spooled"] += len(chunk)
        if counts["spooled"] > limits.max_video_bytes:
            raise Problem(
                413,
                f"the video exceeds the limit of {_mb(limits.max_video_bytes)} (all videos of one request together)",
                slug="video-too-large",
                errors=[field_error(state["name"], f"larger than {_mb(limits.max_video_bytes)}")],
            )
        state["spool"].write(chunk)

    def on_part_end() -> None:
        is_file = state["name"] == limits.file_field or state["filename"] is not None
        if is_file and spooling and not state["sniffed"]:
            _sniff_video()
        if state["spool"] is not None:
            state["spool"].flush()
            form.parts.append(Part(state["name"], state["filename"], state["ctype"], b"", spool=state["spool"]))
            state["spool"] = None
        else:
            form.parts.append(Part(state["name"], state["filename"], state["ctype"], bytes(state["buf"])))
        state["buf"] = None

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
    }
    parser = MultipartParser(boundary, callbacks)
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total - counts["spooled"] > limits.max_request_bytes + len(chunk):
                raise _too_large(limits)
            parser.write(chunk)
            if total - counts["spooled"] > limits.max_request_bytes:
                raise _too_large(limits)
        parser.finalize()
        if parser.state != MultipartState.END:  # the parser itself never says so
            raise FormParserError("the body ends before its closing boundary")
    except BaseException as exc:
        shred_spools(form)  # a refused or broken upload leaves nothing on disk
        if state.get("spool") is not None:
            state["spool"].shred()
        if isinstance(exc, FormParserError):
            raise Problem(400, f"malformed multipart body: {exc}", slug="bad-multipart") from None
        if isinstance(exc, ClientDisconnect):
            raise Problem(400, "the client disconnected during the upload", slug="bad-multipart") from None
        raise
    return form


def shred_spools(form: Form) -> None:
    """Shred the spool file of every video part of ``form`` (idempotent)."""
    for p in form.parts:
        if p.spool is not None:
            p.spool.shred()


#: Bytes of a file part looked at to tell a video (``veil.video.sniff.SNIFF_BYTES``).
_SNIFF_BYTES = 4096


def _is_video(head: bytes) -> bool:
    from veil.video.sniff import is_video  # lazily: the video stack loads only when needed

    return is_video(head)


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MB" if n >= 1024 * 1024 else f"{n} bytes"


def _too_large(limits: UploadLimits) -> Problem:
    return Problem(
        413,
        f"the request body exceeds the limit of {_mb(limits.max_request_bytes)}",
        slug="payload-too-large",
    )


# -- content sniffing --------------------------------------------------------------------
def sniff_format(data: bytes) -> str | None:
    """The image format from magic bytes (never from a name or a declared type)."""
    fmt = formats.sniff(data)
    return fmt.name if fmt else None


def check_image(part: Part, index: int | None, limits: Any, field: str = "files") -> str:
    """Sniff ``part``; refuse non-images (415) and headers announcing too many pixels, or
    far more pixels than the file's bytes could hold (the ratio rule), with 413.

    ``limits`` is a :class:`veil.imageio.Limits` (or, as before, the pixel limit alone).
    Only the header is read here (dimensions); decoding and every other check happen in
    :mod:`veil.imageio` when the pipeline loads the image.
    """
    from veil.errors import ImageError
    from veil.imageio.limits import Limits

    lim = limits if isinstance(limits, Limits) else Limits(max_bytes=1 << 62, max_pixels=int(limits))
    where = f"{field}[{index}]" if index is not None else field
    fmt = sniff_format(part.data)
    if fmt is None and _is_video(part.data[:_SNIFF_BYTES]):
        raise Problem(
            415,
            f"{where} is a video: send videos as jobs (POST /api/v1/jobs), this call takes one photo",
            slug="unsupported-media-type",
            errors=[field_error(where, "a video; use POST /api/v1/jobs")],
        )
    if fmt is None:
        raise Problem(
            415,
            f"{where} is not a supported image ({FORMAT_NAMES}), whatever its name or declared type says",
            slug="unsupported-media-type",
            errors=[field_error(where, f"not a {FORMAT_NAMES} image")],
        )
    try:
        size = header_size(part.data)
    except _Bomb as exc:
        raise Problem(
            413,
            f"{where}: refused as a possible decompression bomb ({exc})",
            slug="image-too-large",
            errors=[field_error(where, "possible decompression bomb")],
        ) from None
    if size is not None:
        try:
            lim.check_size(*size)
            lim.check_ratio(*size, len(part.data), fmt, part.data)
        except ImageError as exc:
            msg = str(exc)
            raise Problem(413, f"{where}: {msg}", slug="image-too-large", errors=[field_error(where, msg)]) from None
    return fmt


def header_pixels(part: Part) -> int:
    """Width x height from ``part``'s header (0 when it cannot be read cheaply)."""
    try:
        size = header_size(part.data)
    except _Bomb:
        return 0
    return size[0] * size[1] if size else 0


class _Bomb(Exception):
    pass


def header_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from the image header, or ``None`` when it can't be read cheaply."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data)) as im:  # lazy: reads the header only
                return int(im.size[0]), int(im.size[1])
        except Image.DecompressionBombError as exc:
            raise _Bomb(str(exc)) from None
        except Exception:  # noqa: BLE001 - corrupt or exotic: leave the verdict to imageio
            return None


_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def safe_stem(filename: str | None, max_len: int = 64) -> str | None:
    """A sanitized base name without extension (no paths, no dots at the start), or ``None``."""
    if not filename:
        return None
    name = re.split(r"[\\/]", filename)[-1]
    name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    if "." in name:
        name = name.rsplit(".", 1)[0]
    name = _SAFE_CHARS.sub("_", name).strip("._-")[:max_len].strip("._-")
    return name or None
