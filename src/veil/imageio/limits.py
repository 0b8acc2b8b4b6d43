"""Size limits that keep a hostile or broken upload from exhausting memory.

Checked from the header, before any pixel is decoded: a decompression bomb (a tiny
file that declares a gigantic canvas) is refused with :class:`~veil.errors.ImageError`
instead of Pillow's warning, so the CLI skips it and the API answers 4xx.
"""

from __future__ import annotations

from dataclasses import dataclass

from veil.errors import ImageError


#: Pixels per byte of file that the flattest *valid* file of each kind stays under, with
#: a wide margin (measured with Pillow 13 on a flat grey image, the best case for every
#: codec): JPEG needs at least one Huffman code per 8x8 block and channel, so even a flat
#: progressive JPEG stays under ~170 px/byte and real photos under 50 (the evaluation set's
#: highest is 41); lossy WEBP (VP8) flat ~560. Lossless codecs (PNG, TIFF, BMP RLE,
#: lossless WEBP) and HEIF code a flat area in almost nothing (flat lossless WEBP reaches
#: 23,000 px/byte at 16 MP, flat HEIF 3,900), so their bound only catches headers that
#: no pixel data backs (a truncated or forged file, which decoders still expand in full).
LOSSY_PIXELS_PER_BYTE = 1000
LOSSLESS_PIXELS_PER_BYTE = 100_000
#: Below this many pixels decoding is cheap whatever the ratio: the rule is not applied.
RATIO_MIN_PIXELS = 1_000_000
#: Deflate never compresses better than 1032:1, so a complete PNG holds at least one byte
#: per 1032 bytes of raw rows: a provable bound (with margin) of 1100 x 8 / bits per pixel.
_DEFLATE_MAX_RATIO = 1100
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def is_lossy(fmt: str, data: bytes) -> bool:
    """JPEG, and WEBP whose first chunk is lossy ``VP8 `` (``VP8L``/``VP8X`` may be lossless)."""
    return fmt == "jpeg" or (fmt == "webp" and data[12:16] == b"VP8 ")


@dataclass(frozen=True)
class Limits:
    """Largest input accepted; the defaults fit any camera or scanner photo."""

    max_bytes: int = 100 * 1024 * 1024
    max_pixels: int = 150_000_000
    max_side: int = 30_000
    #: pixels per byte of file, for lossy formats / for the others (``None``: no check)
    max_pixels_per_byte: float | None = None
    max_pixels_per_byte_lossless: float | None = None
    #: seconds decoding one image may take (``None``: no budget)
    max_decode_seconds: float | None = None

    def check_ratio(self, width: int, height: int, nbytes: int, fmt: str, data: bytes = b"") -> None:
        """Refuse a header announcing far more pixels than the file's bytes could encode."""
        lossy = is_lossy(fmt, data)
        bound = self.max_pixels_per_byte if lossy else self.max_pixels_per_byte_lossless
        if bound is not None and fmt == "png" and len(data) >= 26 and data[25] in _PNG_CHANNELS and data[24]:
            bound = min(bound, _DEFLATE_MAX_RATIO * 8 / (data[24] * _PNG_CHANNELS[data[25]]))
        pixels = width * height
        if bound is None or pixels <= RATIO_MIN_PIXELS or nbytes <= 0:
            return
        ratio = pixels / nbytes
        if ratio > bound:
            raise ImageError(
                f"image is too large for its file: {width}x{height} from {nbytes:,} bytes is {ratio:,.0f} pixels "
                f"per byte; the pixels-per-byte rule allows {bound:,.0f} for {'lossy' if lossy else 'lossless'} "
                f"{fmt.upper()}: refused as a possible decompression bomb"
            )

    def check_decode_time(self, started: float, now: float) -> None:
        """``started``/``now`` from ``time.perf_counter()``; over the decode-time budget → error."""
        if self.max_decode_seconds is not None and now - started > self.max_decode_seconds:
            raise ImageError(
                f"decoding exceeds the decode-time budget of {self.max_decode_seconds:g} s: "
                "refused as too large to decode"
            )

    def check_bytes(self, n: int) -> None:
        if n > self.max_bytes:
            raise ImageError(f"file is too large ({n / 1e6:.1f} MB; limit {self.max_bytes / 1e6:.0f} MB)")
        if n == 0:
            raise ImageError("file is empty")

    def check_size(self, width: int, height: int) -> None:
        if width <= 0 or height <= 0:
            raise ImageError(f"image has no pixels ({width}x{height})")
        if width > self.max_side or height > self.max_side or width * height > self.max_pixels:
            raise ImageError(
                f"image is too large ({width}x{height} = {width * height / 1e6:.0f} Mpx; "
                f"limit {self.max_pixels / 1e6:.0f} Mpx, {self.max_side} px a side): "
                "refused as a possible decompression bomb"
            )


DEFAULT_LIMITS = Limits()
