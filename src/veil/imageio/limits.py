"""Size limits that keep a hostile or broken upload from exhausting memory.

Checked from the header, before any pixel is decoded: a decompression bomb (a tiny
file that declares a gigantic canvas) is refused with :class:`~veil.errors.ImageError`
instead of Pillow's warning, so the CLI skips it and the API answers 4xx.
"""

from __future__ import annotations

from dataclasses import dataclass

from veil.errors import ImageError


@dataclass(frozen=True)
class Limits:
    """Largest input accepted; the defaults fit any camera or scanner photo."""

    max_bytes: int = 100 * 1024 * 1024
    max_pixels: int = 150_000_000
    max_side: int = 30_000

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
