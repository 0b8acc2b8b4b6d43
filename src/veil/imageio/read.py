"""Decode any supported upload into an upright RGB array, refusing anything unsafe.

The format is sniffed from the first bytes (never the file name), and Pillow is only
allowed the matching decoder, so a file cannot pick a surprising code path by lying
about its extension. Sizes are checked from the header before decoding (see
:mod:`veil.imageio.limits`); any decode failure becomes :class:`~veil.errors.ImageError`.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageCms, ImageOps, JpegImagePlugin

import veil.imageio.codecs  # noqa: F401  (HEIF registered, Pillow's pixel guard set)
from veil.errors import ImageError
from veil.imageio import formats
from veil.imageio.limits import DEFAULT_LIMITS, Limits
from veil.imageio.metadata import (
    DEFAULT_QUALITY,
    estimate_jpeg_quality,
    find_metadata,
    icc_colorspace,
    safe_fields,
)
from veil.imageio.nature import Nature, read_nature

#: The formats veil reads, as sniffed (see :mod:`veil.imageio.formats`).
SUPPORTED = formats.NAMES


@dataclass
class LoadedImage:
    """A decoded input: upright pixels plus what the writer and the report need."""

    rgb: np.ndarray  #: ``(H, W, 3)`` uint8, EXIF orientation applied
    alpha: np.ndarray | None  #: ``(H, W)`` uint8 or None, re-attached on output
    format: str  #: sniffed: jpeg, png, webp, heif, tiff, bmp
    icc_profile: bytes | None = None  #: the RGB profile for ``rgb``, as found (output: see imageio.icc)
    quality: int = DEFAULT_QUALITY  #: estimated JPEG quality (92 when unknown)
    metadata: list[str] = field(default_factory=list)  #: blocks found (exif, gps, xmp...)
    safe_metadata: dict[str, Any] = field(default_factory=dict)  #: keepable fields
    orientation: int = 1  #: the EXIF orientation that was applied
    mode: str = "RGB"  #: the source's Pillow mode (CMYK, I;16, P...)
    frames: int = 1  #: images in the file; only the first/primary one is kept
    subsampling: int | None = None  #: JPEG chroma subsampling (0, 1, 2) to reuse
    decode_ms: float = 0.0
    #: grayscale, palette or 16-bit input, rebuilt as such on output (None: 8-bit RGB(A))
    nature: Nature | None = None

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def sniff_format(data: bytes) -> str | None:
    """The format from magic bytes, or None for anything veil does not read."""
    fmt = formats.sniff(data)
    return fmt.name if fmt else None


class _DeadlineReader(io.BytesIO):
    """The file as Pillow reads it, chunk by chunk: past the decode-time budget the next
    read fails, so a long decode stops within one chunk (Pillow reads 64 KB at a time)."""

    def __init__(self, data: bytes, limits: Limits, started: float):
        super().__init__(data)
        self._limits, self._started = limits, started

    def read(self, size: int | None = -1) -> bytes:
        self._limits.check_decode_time(self._started, time.perf_counter())
        return super().read(size)


def _read(source: bytes | bytearray | memoryview | Path | str, limits: Limits) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        limits.check_bytes(len(data))
        return data
    path = Path(source)
    try:
        limits.check_bytes(path.stat().st_size)
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from None


def load_image(source: bytes | Path, *, limits: Limits = DEFAULT_LIMITS) -> LoadedImage:
    """Decode ``source`` (bytes or a path) into an upright :class:`LoadedImage`.

    Raises :class:`ImageError` for unsupported, corrupt, truncated or oversized input.
    """
    t0 = time.perf_counter()
    data = _read(source, limits)
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError(f"not a supported image ({formats.LABELS} expected)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            im = Image.open(_DeadlineReader(data, limits, t0), formats=[formats.BY_NAME[fmt].pil_name])
            limits.check_size(*im.size)
            limits.check_ratio(*im.size, len(data), fmt, data)
            im.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"refused as a possible decompression bomb: {exc}") from None
    except Exception as exc:  # any decoder failure on untrusted input is a bad file, not a bug
        raise ImageError(f"corrupt or truncated {fmt.upper()} image ({type(exc).__name__}: {exc})") from None

    metadata = find_metadata(im, data, fmt)
    icc = im.info.get("icc_profile") or None
    safe = safe_fields(im, icc)
    orientation = int(safe.get("orientation", 1))
    quality = (estimate_jpeg_quality(im) if fmt == "jpeg" else None) or DEFAULT_QUALITY
    subsampling = None
    if fmt == "jpeg":
        s = JpegImagePlugin.get_sampling(im)
        subsampling = s if s in (0, 1, 2) else None
    mode, frames = im.mode, int(getattr(im, "n_frames", 1) or 1)
    try:
        upright = ImageOps.exif_transpose(im) if orientation != 1 else im
        rgb, alpha, icc = _to_rgb(upright, icc)
    except Exception as exc:
        raise ImageError(f"cannot convert {fmt.upper()} image in mode {mode}: {exc}") from None
    try:
        nature = read_nature(im, upright, data, fmt, orientation)
    except Exception:  # an odd file keeps its pixels; only its kind is lost (written as RGB)
        nature = None
    limits.check_decode_time(t0, time.perf_counter())
    if icc is None:
        safe.pop("icc", None)
    else:
        safe["icc"] = icc
    return LoadedImage(
        rgb=rgb,
        alpha=alpha,
        format=fmt,
        icc_profile=icc,
        quality=quality,
        metadata=metadata,
        safe_metadata=safe,
        orientation=orientation,
        mode=mode,
        frames=frames,
        subsampling=subsampling,
        decode_ms=(time.perf_counter() - t0) * 1000.0,
        nature=nature,
    )


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _to_rgb(im: Image.Image, icc: bytes | None) -> tuple[np.ndarray, np.ndarray | None, bytes | None]:
    """``(rgb, alpha, icc)``: 8-bit RGB for detection, alpha to re-attach, a valid RGB ICC."""
    space = icc_colorspace(icc)
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        peak = 1.0 if im.mode == "F" and a.max(initial=0) <= 1.0 else 255.0 if im.mode == "F" else 65535.0
        if im.mode == "I" and a.max(initial=0) <= 255:
            peak = 255.0
        gray = np.clip(np.rint(a * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2)), None, None
    if im.mode == "CMYK":
        if space == b"CMYK":
            srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out = ImageCms.profileToProfile(im, src, srgb, outputMode="RGB")
            return np.array(out, dtype=np.uint8), None, srgb.tobytes()
        return np.array(im.convert("RGB"), dtype=np.uint8), None, None
    if _has_alpha(im):
        rgba = np.array(im.convert("RGBA"), dtype=np.uint8)
        rgb, alpha = np.ascontiguousarray(rgba[:, :, :3]), np.ascontiguousarray(rgba[:, :, 3])
    else:
        rgb, alpha = np.array(im.convert("RGB"), dtype=np.uint8), None
    return rgb, alpha, icc if space == b"RGB " else None
