"""The photo's nature survives anonymization: grayscale stays grayscale, palette PNGs stay
palette (and small), 16-bit stays 16-bit with the unmasked pixels bit for bit."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from veil.detection.types import Detection
from veil.pipeline.core import anonymize_bytes
from veil.pipeline.options import Options

FACE = (180.0, 66.0, 270.0, 176.0)  # the astronaut's face
REGIONS = [Detection("face", 0.9, FACE)]
OUTSIDE = (slice(300, 512), slice(0, 512))  # far from the face: never masked


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _run(data: bytes, **opts):
    res = anonymize_bytes(data, Options(**opts), regions=REGIONS)
    return res, Image.open(io.BytesIO(res.data))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "BMP"])
def test_grayscale_stays_grayscale(fmt, astronaut_rgb):
    gray = Image.fromarray(astronaut_rgb).convert("L")
    data = _save(gray, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    res, out = _run(data)
    assert out.mode == "L", out.mode
    a, src = np.asarray(out).astype(int), np.asarray(Image.open(io.BytesIO(data))).astype(int)
    assert np.abs(a[86:156, 195:255] - src[86:156, 195:255]).mean() > 10  # the face is hidden
    if fmt != "JPEG":
        assert np.array_equal(a[OUTSIDE], src[OUTSIDE])
    # a colour fill on a grey photo becomes its grey level, not an RGB file
    _, filled = _run(data, style="fill", color="#ff0000")
    assert filled.mode == "L"


def test_grayscale_png_stays_small(astronaut_rgb):
    gray = _save(Image.fromarray(astronaut_rgb).convert("L"), "PNG")
    res, out = _run(gray)
    as_rgb = _save(out.convert("RGB"), "PNG")
    assert len(res.data) < 0.6 * len(as_rgb)  # an RGB copy of the same grey pixels: ~2-3x


def test_grayscale_with_alpha_stays_la(astronaut_rgb):
    la = Image.fromarray(np.dstack([cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2GRAY), np.full((512, 512), 180, np.uint8)]), "LA")
    res, out = _run(_save(la, "PNG"))
    assert out.mode == "LA" and (np.asarray(out)[:, :, 1] == 180).all()


def test_palette_png_stays_a_small_palette(astronaut_rgb):
    pal = Image.fromarray(astronaut_rgb).quantize(colors=32, dither=Image.Dither.NONE)
    data = _save(pal, "PNG")
    res, out = _run(data)
    assert out.mode == "P"
    idx_in, idx_out = np.asarray(pal), np.asarray(out)
    assert len(np.unique(idx_out)) <= 32 and np.array_equal(idx_out[OUTSIDE], idx_in[OUTSIDE])
    assert (idx_out[86:156, 195:255] != idx_in[86:156, 195:255]).mean() > 0.5
    assert len(res.data) < 1.3 * len(data)  # was ~3x as RGB
    # transparency: each pixel keeps its entry's alpha
    pal.info["transparency"] = int(idx_in[0, 0])
    res, out = _run(_save(pal, "PNG", transparency=int(idx_in[0, 0])))
    back = np.asarray(out.convert("RGBA"))[:, :, 3]
    assert out.mode == "P" and np.array_equal(back, np.where(idx_in == idx_in[0, 0], 0, 255))


@pytest.mark.parametrize("fmt", [".png", ".tiff"])
def test_16bit_gray_stays_16bit_with_unmasked_pixels_exact(fmt, astronaut_rgb):
    rng = np.random.default_rng(0)
    gray16 = cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257 + rng.integers(0, 200, (512, 512)).astype(np.uint16)
    res, out = _run(cv2.imencode(fmt, gray16)[1].tobytes())
    a = np.asarray(out)
    assert out.mode.startswith("I;16") and a.dtype.itemsize == 2, out.mode
    assert np.array_equal(a[OUTSIDE], gray16[OUTSIDE])  # the low bits survive
    assert np.abs(a[86:156, 195:255].astype(int) - gray16[86:156, 195:255]).mean() > 2000


@pytest.mark.parametrize("fmt", [".png", ".tiff"])
def test_16bit_rgb_stays_16bit_with_unmasked_pixels_exact(fmt, astronaut_rgb):
    rng = np.random.default_rng(0)
    rgb16 = astronaut_rgb.astype(np.uint16) * 257 + rng.integers(0, 200, (512, 512, 3)).astype(np.uint16)
    data = cv2.imencode(fmt, cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))[1].tobytes()
    res = anonymize_bytes(data, Options(), regions=REGIONS)
    back = cv2.cvtColor(cv2.imdecode(np.frombuffer(res.data, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    assert back.dtype == np.uint16 and res.format == fmt.strip(".")
    assert np.array_equal(back[OUTSIDE], rgb16[OUTSIDE])
    assert np.abs(back[86:156, 195:255].astype(int) - rgb16[86:156, 195:255]).mean() > 2000
    # still a clean file: no metadata of the input, and the 8-bit path reads it
    assert b"eXIf" not in res.data and Image.open(io.BytesIO(res.data)).size == (512, 512)
