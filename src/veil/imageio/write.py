"""Encode the anonymized pixels into a fresh file that carries no input metadata.

Images are always rebuilt from the pixel array (never ``Image.save`` of the decoded
input), so EXIF, GPS, XMP, IPTC, comments, text chunks, thumbnails and extra frames
cannot leak through. Only the ICC profile (colour fidelity) and the safe fields the
user asked to keep are written. Pixels are upright, so orientation is reset to 1.
"""

from __future__ import annotations

import io
from typing import Any, Mapping

import numpy as np
from PIL import Image

import veil.imageio.codecs  # noqa: F401  (registers the HEIF encoder)
from veil.errors import OptionsError
from veil.imageio import formats
from veil.imageio.nature import Nature, encode_rgb16, restore

#: Inverse of ``ImageOps.exif_transpose`` per orientation, to store pixels as the camera did.
_UNDO_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
_EXIF_TAGS = {"orientation": 0x0112, "artist": 0x013B, "copyright": 0x8298, "datetime": 0x0132}


def encode_image(
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    fmt: str,
    *,
    quality: int = 92,
    icc_profile: bytes | None = None,
    keep: Mapping[str, Any] | None = None,
    subsampling: int | None = None,
    nature: Nature | None = None,
    source: np.ndarray | None = None,
) -> bytes:
    """Encode upright ``rgb`` (+ ``alpha``) as ``fmt`` with only ICC and ``keep`` fields.

    ``keep`` maps names from ``SAFE_METADATA`` to values (as found by
    :func:`veil.imageio.metadata.safe_fields`); ``orientation`` stores the pixels
    rotated back with the original tag, everything else is written as-is.
    JPEG has no alpha: transparent pixels are flattened onto white, as viewers show them.
    With the input's ``nature`` (grayscale, palette, 16-bit) and ``source`` (the 8-bit RGB
    masking started from), the output is written as the same kind of image where ``fmt``
    stores it, every pixel masking did not change keeping its original value.
    """
    spec = formats.BY_NAME.get(fmt)
    if spec is None:
        raise OptionsError(f"cannot write format {fmt!r}; choose from {', '.join(formats.NAMES)}", field="format")
    keep = dict(keep or {})
    if alpha is not None and not spec.alpha:
        a = alpha.astype(np.float32)[:, :, None] / 255.0
        rgb = np.clip(rgb.astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5, 0, 255).astype(np.uint8)
        alpha = None
    im = None
    if nature is not None and source is not None and _keeps(nature, fmt, keep, icc_profile):
        restored = restore(nature, rgb, alpha, source)
        if isinstance(restored, np.ndarray):  # 16-bit RGB: a writer Pillow does not have
            return encode_rgb16(restored, fmt, icc_profile)
        im = restored
    if im is None and alpha is not None:
        im = Image.fromarray(np.dstack([rgb, alpha]).astype(np.uint8), "RGBA")
    elif im is None:
        im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    orientation = int(keep.get("orientation") or 1)
    if orientation in _UNDO_ORIENTATION:
        im = im.transpose(_UNDO_ORIENTATION[orientation])
    params: dict[str, Any] = {}
    if icc_profile:
        params["icc_profile"] = icc_profile
    tags = {tag: (orientation if name == "orientation" else str(keep[name]))
            for name, tag in _EXIF_TAGS.items() if keep.get(name) and not (name == "orientation" and orientation == 1)}  # fmt: skip
    if tags and spec.exif == "tiffinfo":
        params["tiffinfo"] = tags
    elif tags and spec.exif == "exif":
        exif = Image.Exif()
        for tag, value in tags.items():
            exif[tag] = value
        params["exif"] = exif.tobytes()
    if keep.get("dpi") and spec.dpi:
        params["dpi"] = tuple(keep["dpi"])
    params.update(dict(spec.writer_options))
    if spec.quality:
        params["quality"] = int(quality)
    if fmt == "jpeg" and subsampling is not None:
        params["subsampling"] = subsampling
    buf = io.BytesIO()
    im.save(buf, format=spec.pil_name, **params)
    return buf.getvalue()


def _keeps(nature: Nature, fmt: str, keep: Mapping[str, Any], icc_profile: bytes | None) -> bool:
    """Whether ``fmt`` can hold the input's kind of image with everything asked for."""
    if not nature.stored_as(fmt):
        return False
    if nature.kind == "palette" and nature.index_alpha is not None:
        return fmt == "png"  # transparent palette entries: PNG's tRNS
    if nature.kind == "rgb16":  # written by OpenCV: an ICC profile only in PNG, no other field
        return not keep and (fmt == "png" or not icc_profile)
    return True


def output_format(requested: str | None, source: str) -> str:
    """The format to write: the requested one, else the input's."""
    return requested or source
