"""What an input carries besides pixels, so the report can say what was removed.

veil never copies metadata from input to output (see :mod:`veil.imageio.write`); this
module only *inventories* it (EXIF, GPS, XMP, IPTC, comments, PNG text, maker notes,
embedded thumbnails and extra images, any of which may show or locate a person) and
extracts the few fields that :data:`~veil.pipeline.options.SAFE_METADATA` allows to keep.
It also estimates a JPEG's quality so the re-encoded file is neither bloated nor mushy.
"""

from __future__ import annotations

import struct
from typing import Any

from PIL import ExifTags, Image

#: IJG standard luminance quantization table (quality 50), natural order.
_STD_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
DEFAULT_QUALITY = 92

_GPS_IFD = 0x8825
_EXIF_IFD = 0x8769
_MAKERNOTE = 0x927C
_USER_COMMENT = 0x9286
_ORIENTATION = 0x0112
_ARTIST = 0x013B
_COPYRIGHT = 0x8298
_DATETIME = 0x0132
_DATETIME_ORIGINAL = 0x9003
#: TIFF tags that describe the picture or its maker rather than its pixel layout.
_TIFF_TEXT_TAGS = {270: "description", 271: "make", 272: "model", 305: "software", 315: "artist",
                   316: "host", 33432: "copyright", 306: "datetime"}  # fmt: skip
_TIFF_BLOCK_TAGS = {700: "xmp", 33723: "iptc", 34377: "iptc", 34665: "exif", 34853: "gps", 37724: "photoshop-layers"}

_JPEG_APP_IDS = (
    (b"Exif\x00", "exif"),
    (b"http://ns.adobe.com/xap/1.0/", "xmp"),
    (b"http://ns.adobe.com/xmp/extension/", "xmp"),
    (b"ICC_PROFILE\x00", "icc"),
    (b"MPF\x00", "extra-images"),
    (b"Photoshop 3.0\x00", "iptc"),
    (b"JFXX\x00", "thumbnail"),
    (b"FPXR\x00", "flashpix"),
)


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """``(marker, payload)`` of every segment before the image data (SOS)."""
    out: list[tuple[int, bytes]] = []
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image
            break
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        out.append((marker, data[i + 4 : i + 2 + length]))
        i += 2 + length
    return out


def _jpeg_blocks(data: bytes) -> list[str]:
    found: list[str] = []
    for marker, payload in jpeg_segments(data):
        if marker == 0xFE:
            found.append("comment")
        elif marker == 0xE0 and payload.startswith(b"JFIF\x00") and len(payload) >= 14 and payload[12] * payload[13]:
            found.append("thumbnail")
        elif 0xE0 <= marker <= 0xEF:
            name = next((n for prefix, n in _JPEG_APP_IDS if payload.startswith(prefix)), None)
            if name is None and not (payload.startswith((b"JFIF\x00", b"Adobe"))):
                name = f"app{marker - 0xE0}"
            if name:
                found.append(name)
    return found


def _exif_blocks(exif: Image.Exif) -> list[str]:
    found: list[str] = []
    try:
        if exif.get_ifd(_GPS_IFD):
            found.append("gps")
        sub = exif.get_ifd(_EXIF_IFD)
        if _MAKERNOTE in sub:
            found.append("makernote")
        if _USER_COMMENT in sub:
            found.append("comment")
        if exif.get_ifd(ExifTags.IFD.IFD1):
            found.append("thumbnail")
    except Exception:  # a malformed EXIF block is still an EXIF block; it is dropped anyway
        pass
    return found


def find_metadata(im: Image.Image, data: bytes, fmt: str) -> list[str]:
    """Names of the metadata blocks present, e.g. ``["exif", "gps", "xmp", "comment"]``."""
    found: list[str] = []
    info = im.info
    if fmt == "jpeg":
        found += _jpeg_blocks(data)
    if fmt == "tiff":
        tags = getattr(im, "tag_v2", {})
        found += [name for tag, name in _TIFF_BLOCK_TAGS.items() if tag in tags]
        if any(tag in tags for tag in _TIFF_TEXT_TAGS):
            found.append("tiff-tags")
    elif info.get("exif"):
        found.append("exif")
    if info.get("xmp") or info.get("XML:com.adobe.xmp"):
        found.append("xmp")
    if info.get("icc_profile"):
        found.append("icc")
    if info.get("comment"):
        found.append("comment")
    if info.get("photoshop") or info.get("iptc"):
        found.append("iptc")
    if getattr(im, "text", None) and fmt == "png":
        found.append("png-text")
    if fmt == "png" and "time" in info:  # tIME: when the picture was made
        found.append("time")
    if info.get("thumbnails"):
        found.append("thumbnail")
    if info.get("depth_images") or info.get("aux") or getattr(im, "n_frames", 1) > 1:
        found.append("extra-images")
    if fmt == "heif" and info.get("metadata"):
        found.append("other")
    exif = _exif(im)
    if exif is not None:
        found += _exif_blocks(exif)
    return list(dict.fromkeys(found))


def _exif(im: Image.Image) -> Image.Exif | None:
    try:
        exif = im.getexif()
    except Exception:
        return None
    return exif if len(exif) else None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.strip("\x00 ").strip()
    return value or None


def safe_fields(im: Image.Image, icc: bytes | None) -> dict[str, Any]:
    """The fields of ``SAFE_METADATA`` found in the input, ready for :func:`encode_image`."""
    out: dict[str, Any] = {}
    if icc:
        out["icc"] = icc
    exif = _exif(im)
    if exif is not None:
        orientation = exif.get(_ORIENTATION)
        if isinstance(orientation, int) and 1 <= orientation <= 8:
            out["orientation"] = orientation
        for key, tag in (("artist", _ARTIST), ("copyright", _COPYRIGHT), ("datetime", _DATETIME)):
            value = _text(exif.get(tag))
            if value:
                out[key] = value
        if "datetime" not in out:
            try:
                value = _text(exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL))
            except Exception:
                value = None
            if value:
                out["datetime"] = value
    dpi = im.info.get("dpi")
    if isinstance(dpi, tuple) and len(dpi) == 2 and all(float(v) > 0 for v in dpi):
        out["dpi"] = (float(dpi[0]), float(dpi[1]))
    return out


def estimate_jpeg_quality(im: Image.Image) -> int | None:
    """IJG-equivalent quality from the luminance quantization table (None if not JPEG)."""
    tables = getattr(im, "quantization", None)
    if not tables or 0 not in tables:
        return None
    table = list(tables[0])
    if len(table) != 64:
        return None
    scale = 100.0 * sum(table) / sum(_STD_LUMA)  # IJG: table = std * scale / 100
    quality = (200.0 - scale) / 2.0 if scale <= 100 else 5000.0 / scale
    return int(min(100, max(1, round(quality))))


def icc_colorspace(icc: bytes | None) -> bytes | None:
    """The profile's data colour space (``b"RGB "``, ``b"GRAY"``, ``b"CMYK"``...)."""
    if not icc or len(icc) < 20:
        return None
    return bytes(icc[16:20])
