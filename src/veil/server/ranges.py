"""HTTP Range downloads (RFC 9110 §14): players seek in a video, clients resume downloads.

One range per request (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``); a list of ranges or a
header that is not a byte range is ignored and the whole body is sent (the RFC allows
it). A range that starts past the end is 416 with ``Content-Range: bytes */size``.
``If-Range`` with a validator other than the result's ETag sends the whole body.
The body comes from ``bytes`` (photos, in memory) or from an encrypted spool file read
piece by piece (videos): a range never decrypts more than it sends, plus a chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from veil.server.problems import Problem

#: Bytes read from a spool per piece of a streamed response.
PIECE = 256 * 1024
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


class Positional(Protocol):
    """A finished result that can be read at any offset (``SpoolFile``)."""

    size: int

    def pread(self, offset: int, n: int) -> bytes: ...


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range ``header`` asks for within ``size`` bytes; ``None``: send it all.

    Raises a 416 :class:`Problem` when the range cannot be satisfied.
    """
    if not header:
        return None
    m = _RANGE.match(header)
    if m is None:  # several ranges, other units or garbage: ignored
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise _unsatisfiable(size)
        return ByteRange(max(0, size - n), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid, so ignored
    if start >= size:
        raise _unsatisfiable(size)
    end = int(last) if last else size - 1
    return ByteRange(start, min(end, size - 1))


def _unsatisfiable(size: int) -> Problem:
    return Problem(
        416,
        f"the requested range is outside the result's {size} bytes",
        slug="range-not-satisfiable",
        headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
    )


def _pieces(source: Positional, start: int, length: int) -> Iterator[bytes]:
    at, end = start, start + length
    while at < end:
        piece = source.pread(at, min(PIECE, end - at))
        if not piece:
            return
        at += len(piece)
        yield piece


def ranged_response(
    source: bytes | Positional,
    *,
    media_type: str,
    headers: dict[str, str],
    range_header: str | None,
    if_range: str | None = None,
    etag: str | None = None,
    background: BackgroundTask | None = None,
) -> Response:
    """200 with the whole body or 206 with one range of it, ``Accept-Ranges: bytes`` either way.

    ``background`` runs only after a whole-body (200) response: a player's partial
    requests must not count as "downloaded".
    """
    size = len(source) if isinstance(source, (bytes, bytearray)) else int(source.size)
    out: dict[str, Any] = {**headers, "Accept-Ranges": "bytes"}
    if etag:
        out["ETag"] = etag
    wanted = parse_range(range_header, size) if (not if_range or if_range.strip() == etag) else None
    start, length = (wanted.start, wanted.length) if wanted else (0, size)
    status = 206 if wanted else 200
    if wanted:
        out["Content-Range"] = f"bytes {wanted.start}-{wanted.end}/{size}"
    task = background if status == 200 else None
    if isinstance(source, (bytes, bytearray)):
        return Response(bytes(source[start : start + length]), status_code=status, media_type=media_type,
                        headers=out, background=task)
    out["Content-Length"] = str(length)
    return StreamingResponse(_pieces(source, start, length), status_code=status, media_type=media_type,
                             headers=out, background=task)
