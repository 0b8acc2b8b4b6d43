"""Reading every supported format, limits, metadata stripping and atomic writes."""

from __future__ import annotations

import io
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps, PngImagePlugin

from veil.errors import ImageError
from veil.imageio import (
    CONTENT_TYPES,
    EXTENSIONS,
    Limits,
    atomic_write,
    encode_image,
    load_image,
    sniff_format,
)
from veil.imageio.metadata import jpeg_segments

SECRETS = (b"Exif", b"GPS-FIX", b"http://ns.adobe.com/xap", b"Photoshop 3.0", b"8BIM", b"secret", b"SECRET", b"Jane")


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _close(a: np.ndarray, b: np.ndarray, tol: float = 6.0) -> bool:
    return a.shape == b.shape and float(np.abs(a.astype(float) - b.astype(float)).mean()) < tol


def _iptc_segment(caption: bytes) -> bytes:
    """An APP13 Photoshop/IPTC block, as cameras and DAMs write it."""
    iptc = b"\x1c\x02\x78" + struct.pack(">H", len(caption)) + caption
    irb = b"8BIM\x04\x04\x00\x00" + struct.pack(">I", len(iptc)) + iptc + (b"\x00" if len(iptc) % 2 else b"")
    payload = b"Photoshop 3.0\x00" + irb
    return b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload


def _exif_with_gps() -> Image.Exif:
    ex = Image.Exif()
    ex[0x013B] = "Jane Artist"
    ex[0x8298] = "(c) Daily Paper"
    ex[0x0132] = "2024:05:01 10:00:00"
    ex[0x010F] = "SECRET-CAMERA-MAKE"
    ex[0x8825] = {1: "N", 2: (52.0, 22.0, 12.5), 3: "E", 4: (4.0, 53.0, 0.5), 27: b"ASCII\x00\x00\x00GPS-FIX"}
    ex[0x8769] = {0x927C: b"SECRET-MAKERNOTE", 0x9003: "2024:05:01 09:59:00"}
    return ex


@pytest.fixture(scope="module")
def small_rgb(astronaut_rgb) -> np.ndarray:
    """Half the astronaut: where size does not matter, encoders (HEIF!) run 4x faster."""
    return np.ascontiguousarray(astronaut_rgb[::2, ::2])


@pytest.fixture(scope="module")
def tagged_jpeg(small_rgb) -> bytes:
    """A JPEG carrying EXIF (GPS, maker note), XMP, IPTC and a comment."""
    xmp = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>secret-xmp-location</x:xmpmeta>"
    data = _save(Image.fromarray(small_rgb), "JPEG", quality=90, exif=_exif_with_gps().tobytes(),
                 comment=b"secret comment", xmp=xmp)  # fmt: skip
    data = data[:2] + _iptc_segment(b"secret caption: Jane Doe at home") + data[2:]
    for marker in SECRETS:
        assert marker in data, marker
    return data


# -- sniffing and formats -----------------------------------------------------------------
def test_sniff_ignores_names_and_knows_every_format(small_rgb):
    im = Image.fromarray(small_rgb[:64, :64])
    assert sniff_format(_save(im, "JPEG")) == "jpeg"
    assert sniff_format(_save(im, "PNG")) == "png"
    assert sniff_format(_save(im, "WEBP")) == "webp"
    assert sniff_format(_save(im, "HEIF")) == "heif"
    assert sniff_format(_save(im, "TIFF")) == "tiff"
    assert sniff_format(_save(im, "BMP")) == "bmp"
    assert sniff_format(b"GIF89a....") is None
    assert sniff_format(b"hello world, not an image") is None


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "HEIF", "TIFF", "BMP"])
def test_each_format_loads_as_upright_rgb(fmt, small_rgb):
    data = _save(Image.fromarray(small_rgb), fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP", "HEIF") else {}))
    img = load_image(data)
    assert img.format == {"JPEG": "jpeg", "HEIF": "heif"}.get(fmt, fmt.lower())
    assert img.rgb.dtype == np.uint8 and img.rgb.shape == (256, 256, 3) and img.rgb.flags.c_contiguous
    assert img.alpha is None
    assert _close(img.rgb, small_rgb, tol=8.0 if fmt in ("WEBP", "HEIF") else 3.0)


def test_png_rgba_keeps_alpha_and_writes_it_back(astronaut_rgb):
    alpha = np.tile(np.linspace(0, 255, 512, dtype=np.uint8), (512, 1))
    data = _save(Image.fromarray(np.dstack([astronaut_rgb, alpha])), "PNG")
    img = load_image(data)
    assert np.array_equal(img.alpha, alpha) and np.array_equal(img.rgb, astronaut_rgb)
    back = Image.open(io.BytesIO(encode_image(img.rgb, img.alpha, "png")))
    assert back.mode == "RGBA" and np.array_equal(np.asarray(back)[:, :, 3], alpha)
    # JPEG has no alpha: transparent pixels become white, as viewers show them
    flat = np.asarray(Image.open(io.BytesIO(encode_image(img.rgb, img.alpha, "jpeg", quality=95))))
    assert flat[:, :5].mean() > 240


def test_png_16bit_gray_and_rgb_become_8bit(astronaut_rgb):
    gray16 = (cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257)
    img = load_image(cv2.imencode(".png", gray16)[1].tobytes())
    assert img.mode.startswith("I") and img.rgb.dtype == np.uint8
    assert _close(img.rgb[:, :, 0], cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2GRAY), tol=1.0)
    rgb16 = astronaut_rgb[:, :, ::-1].astype(np.uint16) * 257  # OpenCV writes BGR
    img = load_image(cv2.imencode(".png", rgb16)[1].tobytes())
    assert _close(img.rgb, astronaut_rgb, tol=1.0)


def test_cmyk_grayscale_and_palette(astronaut_rgb):
    im = Image.fromarray(astronaut_rgb)
    cmyk = load_image(_save(im.convert("CMYK"), "JPEG", quality=95))
    assert cmyk.mode == "CMYK" and _close(cmyk.rgb, astronaut_rgb, tol=12.0)
    gray = load_image(_save(im.convert("L"), "JPEG", quality=95))
    assert gray.mode == "L" and gray.rgb.shape == (512, 512, 3)
    assert np.array_equal(gray.rgb[:, :, 0], gray.rgb[:, :, 2])
    pal = im.convert("P", palette=Image.Palette.ADAPTIVE)
    pal.info["transparency"] = 0
    img = load_image(_save(pal, "PNG", transparency=0))
    assert img.alpha is not None and (img.alpha == 0).any() and (img.alpha == 255).any()


def test_exif_orientation_is_applied_and_reset(astronaut_rgb):
    stored = Image.fromarray(astronaut_rgb).transpose(Image.Transpose.ROTATE_90)  # camera held sideways
    ex = Image.Exif()
    ex[0x0112] = 6  # "rotate 90 CW to display"
    data = _save(stored, "JPEG", quality=95, exif=ex.tobytes())
    assert np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))).shape == astronaut_rgb.shape
    img = load_image(data)
    assert img.orientation == 6 and _close(img.rgb, astronaut_rgb, tol=4.0)
    out = Image.open(io.BytesIO(encode_image(img.rgb, None, "jpeg", quality=90)))
    assert out.size == (512, 512) and out.getexif().get(0x0112) in (None, 1)
    # keeping "orientation" stores the camera's pixels with its tag: it still displays upright
    kept = Image.open(io.BytesIO(encode_image(img.rgb, None, "jpeg", quality=95, keep={"orientation": 6})))
    assert kept.getexif().get(0x0112) == 6 and _close(np.asarray(ImageOps.exif_transpose(kept)), astronaut_rgb, 5.0)


def test_jpeg_quality_is_estimated(astronaut_rgb):
    for q in (60, 85, 95):
        assert abs(load_image(_save(Image.fromarray(astronaut_rgb), "JPEG", quality=q)).quality - q) <= 2
    assert load_image(_save(Image.fromarray(astronaut_rgb), "PNG")).quality == 92


# -- metadata -------------------------------------------------------------------------------
def test_metadata_inventory(tagged_jpeg):
    img = load_image(tagged_jpeg)
    assert {"exif", "gps", "makernote", "xmp", "iptc", "comment"} <= set(img.metadata)
    assert img.safe_metadata["artist"] == "Jane Artist"
    assert img.safe_metadata["copyright"] == "(c) Daily Paper"
    assert "gps" not in img.safe_metadata


@pytest.mark.parametrize("fmt", list(EXTENSIONS))
def test_output_carries_no_metadata(fmt, tagged_jpeg):
    img = load_image(tagged_jpeg)
    out = encode_image(img.rgb, None, fmt, quality=img.quality, icc_profile=img.icc_profile)
    for marker in SECRETS:
        assert marker not in out, (fmt, marker)
    if fmt == "jpeg":
        header = b"".join(p for _m, p in jpeg_segments(out))
        assert b"GPS" not in header and {m for m, _p in jpeg_segments(out)} <= {0xE0, 0xDB, 0xC0, 0xC2, 0xC4, 0xDD}
    back = Image.open(io.BytesIO(out))
    assert len(back.getexif()) == 0 or fmt == "tiff"  # TIFF tags are image structure
    assert not [k for k in ("exif", "xmp", "comment", "photoshop", "XML:com.adobe.xmp") if back.info.get(k)]
    assert load_image(out).metadata == []


def test_png_text_chunks_are_found_and_dropped(astronaut_rgb):
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Jane Doe, secret address")
    info.add_text("Comment", "secret note", zip=True)
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>http://ns.adobe.com/xap secret</x:xmpmeta>")
    data = _save(Image.fromarray(astronaut_rgb), "PNG", pnginfo=info, exif=_exif_with_gps().tobytes())
    img = load_image(data)
    assert {"png-text", "xmp", "exif", "gps"} <= set(img.metadata)
    out = encode_image(img.rgb, None, "png")
    chunks, i = [], 8
    while i < len(out):
        n, kind = struct.unpack(">I4s", out[i : i + 8])
        chunks.append(kind)
        i += 12 + n
    assert set(chunks) <= {b"IHDR", b"IDAT", b"IEND", b"iCCP", b"pHYs"}
    assert not Image.open(io.BytesIO(out)).text


def test_keep_metadata_writes_only_safe_fields(tagged_jpeg):
    img = load_image(tagged_jpeg)
    keep = {k: img.safe_metadata[k] for k in ("copyright", "artist", "datetime")}
    out = encode_image(img.rgb, None, "jpeg", quality=90, keep=keep)
    exif = Image.open(io.BytesIO(out)).getexif()
    assert exif[0x8298] == "(c) Daily Paper" and exif[0x013B] == "Jane Artist"
    assert not exif.get_ifd(0x8825) and not exif.get_ifd(0x8769) and 0x010F not in exif
    assert b"GPS-FIX" not in out and b"SECRET" not in out


def test_rgb_icc_profile_is_kept():
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb = np.full((32, 32, 3), 120, np.uint8)
    img = load_image(_save(Image.fromarray(rgb), "PNG", icc_profile=icc))
    assert img.icc_profile == icc
    assert Image.open(io.BytesIO(encode_image(img.rgb, None, "webp", icc_profile=img.icc_profile))).info["icc_profile"] == icc


# -- bad input and limits ---------------------------------------------------------------------
def test_bad_files_raise_image_error(tagged_jpeg, tmp_path):
    with pytest.raises(ImageError, match="not a supported image"):
        load_image(b"hello, I am a text file with a .jpg name")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(tagged_jpeg[: len(tagged_jpeg) // 2])
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path / "missing.jpg")
    fake = tmp_path / "notes.jpg"
    fake.write_text("just text")
    with pytest.raises(ImageError):
        load_image(fake)


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_an_image_error_not_a_warning(recwarn):
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(_png_header(60_000, 60_000))  # 3.6 Gpx declared in 100 bytes
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(_png_header(20_000, 20_000), limits=Limits(max_pixels=10_000_000))
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


def test_byte_and_pixel_limits_are_configurable(astronaut_rgb):
    data = _save(Image.fromarray(astronaut_rgb), "PNG")
    with pytest.raises(ImageError, match="too large"):
        load_image(data, limits=Limits(max_bytes=1000))
    with pytest.raises(ImageError, match="too large"):
        load_image(data, limits=Limits(max_pixels=100_000))
    assert load_image(data, limits=Limits(max_pixels=512 * 512)).width == 512


# -- writing ----------------------------------------------------------------------------------
def test_encode_all_formats_and_content_types(small_rgb):
    for fmt, ext in EXTENSIONS.items():
        out = encode_image(small_rgb, None, fmt, quality=90)
        assert sniff_format(out) == fmt and CONTENT_TYPES[fmt].startswith("image/") and ext.startswith(".")


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "photo.jpg"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    atomic_write(target, b"new content")
    assert target.read_bytes() == b"new content" and (target.stat().st_mode & 0o777) == 0o640
    with pytest.raises(TypeError):
        atomic_write(target, None)  # type: ignore[arg-type]  # fails mid-write
    assert target.read_bytes() == b"new content"
    atomic_write(tmp_path / "fresh.png", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.png", "photo.jpg"]


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "HEIF"])
def test_orientation_in_other_formats(fmt, small_rgb):
    stored = Image.fromarray(small_rgb).transpose(Image.Transpose.ROTATE_270)
    ex = Image.Exif()
    ex[0x0112] = 8  # "rotate 90 CCW to display"
    img = load_image(_save(stored, fmt, exif=ex.tobytes(), **({"quality": 95} if fmt != "PNG" else {})))
    assert _close(img.rgb, small_rgb, tol=6.0)
