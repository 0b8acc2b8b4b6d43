"""Folders and buckets through pyarrow's filesystems: where a bulk run reads and writes.

A location is a local path or ``s3://bucket/prefix``. S3 takes its credentials from the
usual AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
``~/.aws``, an instance role) on each machine that reads or writes; the region from
``AWS_REGION``/``AWS_DEFAULT_REGION`` (else us-east-1, so nothing asks the network which
region a bucket is in) and an S3-compatible endpoint (MinIO, Ceph...) from
``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``.

Writes are atomic, so a killed run leaves whole outputs or none: a local file is written
to a temp file and renamed (:func:`veil.imageio.atomic_write`); an S3 object only appears
when its upload completes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from veil.errors import OptionsError
from veil.imageio import atomic_write


@dataclass(frozen=True)
class Location:
    """One folder, file or bucket prefix: a pyarrow filesystem and a path inside it."""

    fs: object  # pyarrow.fs.FileSystem (pickled to the Ray workers)
    path: str  # the filesystem's own path: absolute for local files, ``bucket/key`` for S3
    scheme: str  # "file" or "s3"

    def uri(self, path: str) -> str:
        """How a path of this filesystem is shown to the user."""
        return f"s3://{path}" if self.scheme == "s3" else path


def is_remote(value: str) -> bool:
    return "://" in str(value)


def locate(value: str | Path) -> Location:
    """The :class:`Location` of a local path or an ``s3://`` URL; other schemes are refused."""
    import pyarrow.fs as pafs

    text = str(value)
    if not is_remote(text):
        return Location(pafs.LocalFileSystem(), str(Path(text).resolve()), "file")
    url = urlparse(text)
    if url.scheme not in ("s3", "s3a") or not url.netloc:
        raise OptionsError(f"unsupported location {text!r}: use a local path or s3://bucket/prefix")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    kw: dict = {"region": region}
    if endpoint:
        parsed = urlparse(endpoint)
        kw.update(endpoint_override=parsed.netloc or parsed.path, scheme=parsed.scheme or "https")
    fs = pafs.S3FileSystem(**kw)
    return Location(fs, f"{url.netloc}/{url.path.strip('/')}".rstrip("/"), "s3")


def list_files(loc: Location) -> list[tuple[str, int]]:
    """``(path, size)`` of every file at ``loc`` (recursively; the file itself if it is one;
    nothing if it does not exist). Hidden files (``.name``) are left out."""
    import pyarrow.fs as pafs

    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.File:
        return [(info.path, info.size)]
    if info.type == pafs.FileType.NotFound and loc.scheme == "file":
        return []
    sel = pafs.FileSelector(loc.path, recursive=True, allow_not_found=True)
    out = [(i.path, i.size) for i in loc.fs.get_file_info(sel) if i.type == pafs.FileType.File]
    return sorted((p, s) for p, s in out if not any(part.startswith(".") for part in relative(p, loc.path).split("/")))


def relative(path: str, root: str) -> str:
    return path[len(root):].lstrip("/") if path.startswith(root) else path.rsplit("/", 1)[-1]


def read_bytes(fs, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(fs, scheme: str, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module's docstring)."""
    if scheme == "file":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
        return
    with fs.open_output_stream(path) as f:
        f.write(data)
