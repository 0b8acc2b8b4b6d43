"""One record per image and video format: the single description every face of veil derives from.

The reader's sniffing and decoder choice, the writer's Pillow name, extension, MIME type
and encoder settings, the server's 415 message and archive names, the CLI's folder
suffixes and the web page's accepted types (served by ``GET /api/v1/formats``) all come
from :data:`IMAGE_FORMATS`, so two tables can no longer disagree about a format.
Video container families get the same kind of record (:class:`VideoFormat`; their
sniffing stays in :mod:`veil.video.sniff`). This module imports nothing of veil: every
layer may use it, and it is cheap to import (``veil submit`` walks folders by it).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

#: ISO-BMFF brands of HEIF still images (HEIC, HEIF and their sequences).
HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs",
                         b"mif1", b"msf1", b"mif2"})  # fmt: skip


def _jpeg(d: bytes) -> bool:
    return d[:3] == b"\xff\xd8\xff"


def _png(d: bytes) -> bool:
    return d[:8] == b"\x89PNG\r\n\x1a\n"


def _webp(d: bytes) -> bool:
    return d[:4] == b"RIFF" and d[8:12] == b"WEBP"


def _heif(d: bytes) -> bool:
    if d[4:8] != b"ftyp":
        return False
    size = int.from_bytes(d[:4], "big")
    box = d[8 : min(max(size, 16), 256)]
    return bool({box[i : i + 4] for i in range(0, len(box) - 3, 4)} & HEIF_BRANDS)


def _tiff(d: bytes) -> bool:
    return d[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF


def _bmp(d: bytes) -> bool:
    return d[:2] == b"BM" and len(d) >= 26


class _Described:
    """What image and video records share: the suffix written, the types, the API's JSON."""

    KIND = ""
    name: str
    label: str
    extensions: tuple[str, ...]
    mime_type: str
    mime_aliases: tuple[str, ...]

    @property
    def extension(self) -> str:
        """The suffix written, with its dot (``.jpg``)."""
        return self.extensions[0]

    @property
    def mime_types(self) -> tuple[str, ...]:
        return (self.mime_type, *self.mime_aliases)

    def describe(self) -> dict[str, Any]:
        """The JSON the API lists (and the web page reads its accepted types from)."""
        return {"name": self.name, "label": self.label, "kind": self.KIND,
                "extensions": [e.lstrip(".") for e in self.extensions],
                "mime_type": self.mime_type, "mime_types": list(self.mime_types)}  # fmt: skip


@dataclass(frozen=True)
class ImageFormat(_Described):
    """Everything veil knows about one image format, stated once."""

    KIND = "image"

    name: str  #: veil's name (``--format``, reports): jpeg, png, webp, heif, tiff, bmp
    label: str  #: how messages name it
    #: suffixes, the first is the one written; all are picked up from folders
    extensions: tuple[str, ...]
    mime_type: str  #: the type results are served with
    #: further types browsers and clients give such files (accepted, never served)
    mime_aliases: tuple[str, ...]
    pil_name: str  #: the only Pillow plugin allowed to decode and encode it
    sniff: Callable[[bytes], bool]  #: True when the first bytes are this format
    #: other names ``--format`` / ``"format"`` take for it (``jpg``, ``tif``...)
    aliases: tuple[str, ...] = ()
    alpha: bool = True  #: stores transparency (else flattened onto white)
    quality: bool = False  #: the encoder takes a quality (1-100)
    dpi: bool = False  #: stores a resolution
    #: how kept EXIF fields are written: ``exif`` block, ``tiffinfo`` tags, or not at all
    exif: str | None = "exif"
    #: fixed encoder settings, as ``(name, value)`` pairs (Pillow ``save`` keywords)
    writer_options: tuple[tuple[str, Any], ...] = ()


#: Registered once, in the order messages list them.
IMAGE_FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("jpeg", "JPEG", (".jpg", ".jpeg", ".jfif", ".jpe"), "image/jpeg", ("image/pjpeg",), "JPEG", _jpeg,
                aliases=("jpg", "jfif"), alpha=False, quality=True, dpi=True,
                writer_options=(("optimize", True),)),
    ImageFormat("png", "PNG", (".png",), "image/png", (), "PNG", _png, dpi=True),
    ImageFormat("webp", "WEBP", (".webp",), "image/webp", (), "WEBP", _webp, quality=True),
    ImageFormat("heif", "HEIC", (".heic", ".heif"), "image/heic",
                ("image/heif", "image/heic-sequence", "image/heif-sequence"), "HEIF", _heif,
                aliases=("heic",), quality=True),
    ImageFormat("tiff", "TIFF", (".tif", ".tiff"), "image/tiff", (), "TIFF", _tiff, aliases=("tif",), dpi=True,
                exif="tiffinfo", writer_options=(("compression", "tiff_lzw"),)),
    ImageFormat("bmp", "BMP", (".bmp",), "image/bmp", ("image/x-ms-bmp",), "BMP", _bmp, alpha=False, dpi=True,
                exif=None),  # Pillow reads a 32-bit BMP back without its alpha: flattened like JPEG
)
BY_NAME: Mapping[str, ImageFormat] = MappingProxyType({f.name: f for f in IMAGE_FORMATS})
#: veil's format names, in the registry's order.
NAMES: tuple[str, ...] = tuple(BY_NAME)
#: Every suffix of every image format, dots included (folders are walked by these).
SUFFIXES: frozenset[str] = frozenset(e for f in IMAGE_FORMATS for e in f.extensions)
#: ``"JPEG, PNG, WEBP, HEIC, TIFF or BMP"``: how messages name what is accepted.
LABELS: str = ", ".join(f.label for f in IMAGE_FORMATS[:-1]) + f" or {IMAGE_FORMATS[-1].label}"


def sniff(data: bytes) -> ImageFormat | None:
    """The format from magic bytes (never a name or a declared type), or None."""
    return next((f for f in IMAGE_FORMATS if f.sniff(data)), None)


def lookup(name: str) -> ImageFormat | None:
    """The format a user names: its name, an alias or a suffix, any case (``JPG``, ``.tif``)."""
    key = name.strip().lower().lstrip(".")
    for f in IMAGE_FORMATS:
        if key == f.name or key in f.aliases or f".{key}" in f.extensions:
            return f
    return None


@dataclass(frozen=True)
class VideoFormat(_Described):
    """One video container family veil takes (sniffed by :func:`veil.video.sniff.sniff_container`)."""

    KIND = "video"
    name: str  #: the sniffed family: mp4, mov, matroska, avi, mpegts, flv
    label: str  #: how messages name it
    extensions: tuple[str, ...]  #: suffixes, the first is the one written
    mime_type: str  #: the type results are served with
    mime_aliases: tuple[str, ...] = ()  #: further types clients give such files


VIDEO_FORMATS: tuple[VideoFormat, ...] = (
    VideoFormat("mp4", "MP4", (".mp4", ".m4v"), "video/mp4", ("video/x-m4v",)),
    VideoFormat("mov", "MOV", (".mov",), "video/quicktime"),
    VideoFormat("matroska", "MKV/WEBM", (".mkv", ".webm"), "video/x-matroska", ("video/webm",)),
    VideoFormat("avi", "AVI", (".avi",), "video/x-msvideo", ("video/avi",)),
    # M2TS (192-byte packets: Blu-ray, AVCHD camcorders) is read as the same family, written as .ts
    VideoFormat("mpegts", "MPEG-TS/M2TS", (".ts", ".mts", ".m2ts"), "video/mp2t", ("video/vnd.dlna.mpeg-tts",)),
    VideoFormat("flv", "FLV", (".flv",), "video/x-flv"),
)
VIDEO_BY_NAME: Mapping[str, VideoFormat] = MappingProxyType({f.name: f for f in VIDEO_FORMATS})
#: Every suffix of every video family, dots included.
VIDEO_SUFFIXES: frozenset[str] = frozenset(e for f in VIDEO_FORMATS for e in f.extensions)
#: ``"MP4, MOV, MKV/WEBM, AVI, MPEG-TS/M2TS or FLV"``: how messages name the videos taken.
VIDEO_LABELS: str = ", ".join(f.label for f in VIDEO_FORMATS[:-1]) + f" or {VIDEO_FORMATS[-1].label}"


def describe_all() -> list[dict[str, Any]]:
    """Every image and video format, as ``GET /api/v1/formats`` lists them."""
    return [f.describe() for f in (*IMAGE_FORMATS, *VIDEO_FORMATS)]


#: Suffix written per format (with its dot) and the type results are served with.
EXTENSIONS = {f.name: f.extension for f in IMAGE_FORMATS}
CONTENT_TYPES = {f.name: f.mime_type for f in IMAGE_FORMATS}
