"""How a hidden region looks: ``blur`` (default), ``pixelate`` or ``fill``.

Irreversible by construction, at every strength. ``blur`` and ``pixelate`` never
filter the original pixels (a plain Gaussian blur can be partly deconvolved); they
first *destroy* the detail:

1. the region is averaged down to a handful of blocks (``cv2.INTER_AREA`` is a true
   box average): between 6 blocks across the object at strength 0 and 2 at strength
   100, the block size scaling with the object so small and large faces look equally
   hidden; at most ``6 x 6`` colours survive of a face, far too few to identify anyone;
2. random noise (from the OS entropy pool, not reproducible) is added to every block,
   so even those averages cannot be recovered exactly;
3. only then is the result shown: ``pixelate`` as square blocks, ``blur`` upsampled
   smoothly and Gaussian-blurred so it looks like a strong blur.

``fill`` replaces the region with one colour.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Blocks across the object at strength 0 and at strength 100.
BLOCKS_AT_0, BLOCKS_AT_100 = 6.0, 2.0
MIN_BLOCK_PX = 2.0
#: Standard deviation (in 0-255 levels) of the noise added to each block.
NOISE_SIGMA = 4.0
#: ``blur`` is smoothed at this many pixels per block, then resized (cheap at any size).
_BLUR_UPSCALE = 8


def block_size(size: float, strength: int) -> float:
    """Side in px of one averaged block for an object of ``size`` px."""
    blocks = BLOCKS_AT_0 + (BLOCKS_AT_100 - BLOCKS_AT_0) * min(max(strength, 0), 100) / 100.0
    return max(MIN_BLOCK_PX, size / blocks)


def _destroyed(crop: np.ndarray, block: float, rng: np.random.Generator) -> np.ndarray:
    """The crop box-averaged down to blocks of ``block`` px, plus noise (float32)."""
    h, w = crop.shape[:2]
    nw, nh = max(1, int(round(w / block))), max(1, int(round(h / block)))
    small = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float32)
    small += rng.normal(0.0, NOISE_SIGMA, small.shape).astype(np.float32)
    return small.reshape(nh, nw, -1)


def render(
    crop: np.ndarray,
    style: str,
    *,
    size: float,
    strength: int,
    color: tuple[int, int, int] = (0, 0, 0),
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The replacement pixels (float32, same shape as ``crop``) for one object."""
    h, w = crop.shape[:2]
    if style == "fill":
        return np.broadcast_to(np.asarray(color, dtype=np.float32), (h, w, 3)).copy()
    rng = rng if rng is not None else np.random.default_rng()
    small = _destroyed(crop, block_size(size, strength), rng)
    if style == "pixelate":
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    elif style == "blur":
        nh, nw = small.shape[:2]
        up = cv2.resize(small, (nw * _BLUR_UPSCALE, nh * _BLUR_UPSCALE), interpolation=cv2.INTER_LINEAR)
        up = cv2.GaussianBlur(up, (0, 0), sigmaX=_BLUR_UPSCALE * 0.6, borderType=cv2.BORDER_REPLICATE)
        out = cv2.resize(up, (w, h), interpolation=cv2.INTER_LINEAR)
    else:
        raise ValueError(f"unknown style {style!r}")
    return np.clip(out.reshape(h, w, 3), 0.0, 255.0)
