"""A generated corpus of hostile uploads (no tests here): every file is built from a small
real photo with Pillow and byte surgery, deterministically (seeded), in memory.

Each :class:`Case` says what a sane server must answer: ``refuse`` (a clear 4xx, or for a
job a failed image with its reason), or ``any`` (a valid but odd file: a result is right
too). Kinds: truncated and corrupt files of each format, polyglots, bombs (pixel bombs,
zlib bombs in PNG data and chunks, huge-dimension headers), animated and multi-frame
files, huge metadata, odd modes, wrong types and hostile file names.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import pillow_heif
from PIL import Image

pillow_heif.register_heif_opener()

FORMATS = ("JPEG", "PNG", "WEBP", "HEIF", "TIFF", "BMP", "GIF")


@dataclass(frozen=True)
class Case:
    name: str  #: kind/what, for messages
    data: bytes
    expect: str  #: "refuse" or "any"
    filename: str = "upload.jpg"


def _photo(side: int = 96) -> Image.Image:
    from skimage import data as skdata

    return Image.fromarray(skdata.astronaut()).resize((side, side))


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def _png(width: int, height: int, raw: bytes, *extra: bytes, color_type: int = 0, level: int = 9) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + b"".join(extra)
            + _chunk(b"IDAT", zlib.compress(raw, level)) + _chunk(b"IEND", b""))


def patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    b = bytearray(data)
    i = 2
    while i + 4 < len(b):
        marker, length = b[i + 1], struct.unpack(">H", b[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            b[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(b)
        i += 2 + length
    raise ValueError("no SOF")


def _patch_png_size(data: bytes, width: int, height: int) -> bytes:
    ihdr = struct.pack(">II", width, height) + data[24:29]
    return data[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF) + data[33:]


def _patch_heif_size(data: bytes, width: int, height: int) -> bytes:
    i = data.index(b"ispe")
    return data[: i + 8] + struct.pack(">II", width, height) + data[i + 16 :]


def _patch_webp_size(data: bytes, width: int, height: int) -> bytes:
    b = bytearray(data)
    if b[12:16] == b"VP8 ":  # frame header: 3 bytes tag, 3 bytes start code, 14-bit sizes
        b[26:30] = struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
    return bytes(b)


def _patch_bmp_size(data: bytes, width: int, height: int) -> bytes:
    return data[:18] + struct.pack("<ii", width, height) + data[26:]


def _patch_gif_size(data: bytes, width: int, height: int) -> bytes:
    return data[:6] + struct.pack("<HH", width, height) + data[10:]


def _tiff_huge(width: int, height: int) -> bytes:
    """A little-endian TIFF whose IFD declares ``width`` x ``height`` over a few bytes of strip."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0" * 16


def corpus() -> list[Case]:
    """At least 100 hostile uploads, the same bytes on every run."""
    rng = np.random.default_rng(12)
    photo = _photo()
    base = {
        "JPEG": encode(photo, "JPEG", quality=85),
        "PNG": encode(photo, "PNG"),
        "WEBP": encode(photo, "WEBP", quality=80),
        "HEIF": encode(photo, "HEIF", quality=60),
        "TIFF": encode(photo, "TIFF", compression="tiff_deflate"),
        "BMP": encode(photo, "BMP"),
        "GIF": encode(photo, "GIF"),
    }
    cases: list[Case] = []
    add = cases.append

    # truncated and corrupt files of each format
    for fmt, data in base.items():
        for frac in (0.02, 0.3, 0.6, 0.97):
            n = max(12, int(len(data) * frac))
            add(Case(f"truncated/{fmt}/{frac}", data[:n], "any" if fmt in ("BMP",) and frac > 0.9 else "refuse"))
        flipped = bytearray(data)
        for pos in rng.integers(len(data) // 4, len(data), 40):
            flipped[int(pos)] ^= 0xFF
        add(Case(f"corrupt/{fmt}/flipped", bytes(flipped), "any"))
        zeroed = data[: len(data) // 3] + b"\0" * (len(data) // 3) + data[2 * len(data) // 3 :]
        add(Case(f"corrupt/{fmt}/zeroed", zeroed, "any"))
        garbage_after_magic = data[:16] + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
        add(Case(f"corrupt/{fmt}/garbage", garbage_after_magic, "refuse"))
    add(Case("gif/valid", base["GIF"], "refuse", "photo.gif"))  # not a supported input

    # bombs: huge-dimension headers, pixel bombs from tiny files, zlib bombs
    for side in (12000, 65000):
        add(Case(f"bomb/JPEG/{side}", patch_jpeg_size(base["JPEG"], side, side), "refuse"))
        add(Case(f"bomb/PNG/{side}", _patch_png_size(base["PNG"], side, side), "refuse"))
        add(Case(f"bomb/HEIF/{side}", _patch_heif_size(base["HEIF"], side, side), "refuse"))
        add(Case(f"bomb/BMP/{side}", _patch_bmp_size(base["BMP"], side, side), "refuse"))
        add(Case(f"bomb/GIF/{side}", _patch_gif_size(base["GIF"], min(side, 65535), min(side, 65535)), "refuse"))
        add(Case(f"bomb/TIFF/{side}", _tiff_huge(side, side), "refuse"))
    add(Case("bomb/WEBP/16383", _patch_webp_size(base["WEBP"], 16383, 16383), "refuse"))
    progressive = encode(photo, "JPEG", quality=85, progressive=True)
    add(Case("bomb/JPEG/progressive-12000", patch_jpeg_size(progressive, 12000, 12000), "refuse"))
    add(Case("bomb/JPEG/thin-30000x8000", patch_jpeg_size(base["JPEG"], 30000, 8000), "refuse"))
    add(Case("bomb/PNG/zlib-idat-60000", _png(60000, 60000, b"\0" * (60001 * 64)), "refuse"))
    add(Case("bomb/PNG/zlib-idat-overlong", _png(64, 64, b"\0" * (65 * 64) + b"\0" * 50_000_000, level=9), "any"))
    big_text = zlib.compress(b"A" * 64_000_000, 9)
    add(Case("bomb/PNG/ztxt", _png(64, 64, b"\0" * (65 * 64), _chunk(b"zTXt", b"Comment\0\0" + big_text)), "any"))
    add(Case("bomb/PNG/iccp", _png(64, 64, b"\0" * (65 * 64), _chunk(b"iCCP", b"icc\0\0" + big_text)), "any"))
    add(Case("bomb/PNG/itxt", _png(64, 64, b"\0" * (65 * 64), _chunk(b"iTXt", b"XML:com.adobe.xmp\0\1\0\0\0" + big_text)), "any"))
    add(Case("bomb/PNG/many-chunks", _png(64, 64, b"\0" * (65 * 64), *[_chunk(b"tEXt", b"k\0v")] * 20000), "any"))

    # animated and multi-frame files
    frames = [photo.rotate(a) for a in (0, 90, 180)]
    add(Case("frames/GIF", encode(frames[0], "GIF", save_all=True, append_images=frames[1:]), "refuse"))
    add(Case("frames/APNG", encode(frames[0], "PNG", save_all=True, append_images=frames[1:]), "any"))
    add(Case("frames/WEBP", encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]), "any"))
    add(Case("frames/TIFF", encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]), "any"))
    add(Case("frames/HEIF", encode(frames[0], "HEIF", save_all=True, append_images=frames[1:]), "any"))
    add(Case("frames/TIFF-100", encode(frames[0], "TIFF", save_all=True, append_images=[frames[1]] * 99), "any"))

    # huge metadata
    exif = Image.Exif()
    exif[0x010E] = "x" * 60000  # ImageDescription
    add(Case("meta/JPEG/exif-60k", encode(photo, "JPEG", exif=exif.tobytes()), "any"))
    app_segments = b"".join(b"\xff\xe2" + struct.pack(">H", 65535) + b"\0" * 65533 for _ in range(60))
    add(Case("meta/JPEG/app2-x60", base["JPEG"][:2] + app_segments + base["JPEG"][2:], "any"))
    add(Case("meta/JPEG/icc-garbage", encode(photo, "JPEG", icc_profile=rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes()), "any"))
    add(Case("meta/PNG/text-4MB", _png(64, 64, b"\0" * (65 * 64), _chunk(b"tEXt", b"Comment\0" + b"y" * 4_000_000)), "any"))
    add(Case("meta/TIFF/description-2MB", encode(photo, "TIFF", description="z" * 2_000_000), "any"))
    add(Case("meta/WEBP/exif-garbage", encode(photo, "WEBP", exif=b"Exif\0\0" + b"\xff" * 50000), "any"))
    bad_exif = base["JPEG"][:2] + b"\xff\xe1" + struct.pack(">H", 2 + 6 + 14) + b"Exif\0\0" + b"MM\x00*\x00\x00\x00\x08\xff\xff\xff\xff\xff\xff" + base["JPEG"][2:]
    add(Case("meta/JPEG/exif-bad-ifd", bad_exif, "any"))
    orient = Image.Exif()
    orient[0x0112] = 9  # no such orientation
    add(Case("meta/JPEG/orientation-9", encode(photo, "JPEG", exif=orient.tobytes()), "any"))

    # odd modes and shapes
    add(Case("mode/JPEG/CMYK", encode(photo.convert("CMYK"), "JPEG"), "any"))
    add(Case("mode/JPEG/L", encode(photo.convert("L"), "JPEG"), "any"))
    add(Case("mode/PNG/I16", encode(Image.fromarray((np.asarray(photo.convert("L")).astype(np.uint16) * 257)), "PNG"), "any"))
    add(Case("mode/PNG/LA", encode(photo.convert("LA"), "PNG"), "any"))
    add(Case("mode/PNG/P-transparency", encode(photo.convert("P"), "PNG", transparency=0), "any"))
    add(Case("mode/PNG/1", encode(photo.convert("1"), "PNG"), "any"))
    add(Case("mode/PNG/RGBA", encode(photo.convert("RGBA"), "PNG"), "any"))
    add(Case("mode/TIFF/F", encode(Image.fromarray(np.asarray(photo.convert("L"), dtype=np.float32) / 255), "TIFF"), "any"))
    add(Case("mode/TIFF/CMYK", encode(photo.convert("CMYK"), "TIFF"), "any"))
    add(Case("mode/TIFF/I32", encode(photo.convert("I"), "TIFF"), "any"))
    add(Case("mode/TIFF/LAB", encode(photo.convert("LAB"), "TIFF"), "any"))
    add(Case("mode/BMP/1", encode(photo.convert("1"), "BMP"), "any"))
    add(Case("mode/BMP/P", encode(photo.convert("P"), "BMP"), "any"))
    add(Case("mode/WEBP/RGBA", encode(photo.convert("RGBA"), "WEBP", lossless=True), "any"))
    add(Case("shape/1x1", encode(Image.new("RGB", (1, 1)), "PNG"), "any"))
    add(Case("shape/1x4000", encode(Image.new("RGB", (1, 4000), (9, 9, 9)), "PNG"), "any"))
    add(Case("shape/4000x2", encode(Image.new("RGB", (4000, 2), (9, 9, 9)), "JPEG"), "any"))
    add(Case("shape/PNG-0x0", _patch_png_size(base["PNG"], 0, 0), "refuse"))
    add(Case("shape/JPEG-0x0", patch_jpeg_size(base["JPEG"], 0, 0), "refuse"))

    # wrong types
    for label, blob in (
        ("empty", b""),
        ("one-byte", b"\xff"),
        ("text", b"just some text, not a photo\n" * 50),
        ("html", b"<!doctype html><script>alert(1)</script>" * 20),
        ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="9" height="9"/></svg>'),
        ("pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"),
        ("zip", b"PK\x03\x04" + b"\0" * 200),
        ("elf", b"\x7fELF\x02\x01\x01" + b"\0" * 200),
        ("random", rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()),
        ("jpeg-magic-only", b"\xff\xd8\xff"),
        ("png-magic-only", b"\x89PNG\r\n\x1a\n"),
        ("riff-wave", b"RIFF\x24\0\0\0WAVEfmt " + b"\0" * 40),
        ("ftyp-mp4-stub", b"\0\0\0\x18ftypisom\0\0\0\0isommp41" + b"\0" * 100),
        ("ico", b"\0\0\1\0\1\0\x10\x10" + b"\0" * 100),
        ("psd", b"8BPS\0\1" + b"\0" * 100),
    ):
        add(Case(f"type/{label}", blob, "refuse", f"{label}.jpg"))

    # polyglots
    add(Case("poly/JPEG+ZIP", base["JPEG"] + b"PK\x03\x04" + b"\0" * 500, "any"))
    add(Case("poly/PNG+HTML", base["PNG"] + b"<html><script>alert(1)</script></html>", "any"))
    add(Case("poly/JPEG-magic+PNG", b"\xff\xd8\xff" + base["PNG"], "refuse"))
    add(Case("poly/BMP-header+JPEG", base["BMP"][:54] + base["JPEG"], "refuse"))
    add(Case("poly/PNG+appended-JPEG", base["PNG"] + base["JPEG"], "any"))
    add(Case("poly/GIF+JS", b"GIF89a/*" + base["GIF"][8:] + b"*/=alert(1)", "refuse"))

    # hostile file names on a valid photo
    for label, name in (
        ("traversal", "../../../etc/passwd.jpg"),
        ("nul", "a\x00b.jpg"),
        ("crlf", "a\r\nX-Injected: 1.jpg"),
        ("long", "n" * 4000 + ".jpg"),
        ("rtl", "photo\u202egpj.exe"),
        ("quotes", '"; rm -rf / #.jpg'),
        ("windows", "C:\\Windows\\system32\\CON.jpg"),
        ("empty", ""),
    ):
        add(Case(f"name/{label}", base["JPEG"], "any", name))
    return cases
