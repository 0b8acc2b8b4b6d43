"""How a hidden region looks: ``blur`` (default), ``pixelate`` or ``fill``.

Irreversible by construction, at every strength. ``blur`` and ``pixelate`` never
filter the original pixels (a plain Gaussian blur can be partly deconvolved); they
first *destroy* the detail:

1. the region is averaged down to a handful of blocks (``cv2.INTER_AREA`` is a true
   box average), a few blocks across the object (see :data:`BLOCKS`), the block size
   scaling with the object so small and large faces look equally hidden; only those
   few averaged colours of a face survive, far too few to identify anyone;
2. random noise (from the OS entropy pool, not reproducible) is added to every block,
   so even those averages cannot be recovered exactly;
3. only then is the result shown: ``pixelate`` as square blocks; ``blur`` upsampled
   smoothly, Gaussian-blurred, then diffused (each pixel swapped with a random
   neighbour up to one block away) and grained like frosted glass. The frosting is
   not decoration: a smooth skin-coloured oval under hair is still "a face" to the
   blur-robust CNN detectors we use, and the verify pass would find every blur again.

``fill`` replaces the region with one colour.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Blocks across the object (geometric mean of its box sides) at strength 0 and 100.
BLOCKS = {"blur": (4.0, 2.0), "pixelate": (4.5, 2.5)}
MIN_BLOCK_PX = 2.0
#: Standard deviation (0-255 levels) of the noise added to each block.
BLOCK_NOISE = {"blur": 4.0, "pixelate": 10.0}
#: ``blur``: Gaussian sigma (in blocks), diffusion radius (in blocks), grain (levels).
BLUR_SIGMA, DIFFUSE, GRAIN = 0.6, 1.0, 18.0
#: ``blur`` is smoothed at this many pixels per block, then resized (cheap at any size).
_UPSCALE = 8


def block_size(size: float, strength: int, style: str = "blur") -> float:
    """Side in px of one averaged block for an object of ``size`` px."""
    at0, at100 = BLOCKS.get(style, BLOCKS["blur"])
    blocks = at0 + (at100 - at0) * min(max(strength, 0), 100) / 100.0
    return max(MIN_BLOCK_PX, size / blocks)


def block_alpha(alpha: np.ndarray, size: float, strength: int) -> np.ndarray:
    """``pixelate``'s alpha snapped to its block grid: a block is as opaque as its most
    opaque pixel, so the outline is a staircase of whole blocks, not a smooth oval."""
    h, w = alpha.shape
    block = block_size(size, strength, "pixelate")
    nw, nh = max(1, int(round(w / block))), max(1, int(round(h / block)))
    xs = np.linspace(0, w, nw + 1).round().astype(int)
    ys = np.linspace(0, h, nh + 1).round().astype(int)
    cols = np.maximum.reduceat(alpha, xs[:-1], axis=1)
    cells = np.maximum.reduceat(cols, ys[:-1], axis=0)
    return np.repeat(np.repeat(cells, np.diff(ys), axis=0), np.diff(xs), axis=1)


def _destroyed(crop: np.ndarray, block: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """The crop box-averaged down to blocks of ``block`` px, plus noise (float32)."""
    h, w = crop.shape[:2]
    nw, nh = max(1, int(round(w / block))), max(1, int(round(h / block)))
    small = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float32).reshape(nh, nw, -1)
    return small + rng.normal(0.0, sigma, small.shape).astype(np.float32)


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
    if style not in BLOCKS:
        raise ValueError(f"unknown style {style!r}")
    rng = rng if rng is not None else np.random.default_rng()
    block = block_size(size, strength, style)
    small = _destroyed(crop, block, BLOCK_NOISE[style], rng)
    if style == "pixelate":
        return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST).reshape(h, w, 3), 0.0, 255.0)
    nh, nw = small.shape[:2]
    up = cv2.resize(small, (nw * _UPSCALE, nh * _UPSCALE), interpolation=cv2.INTER_LINEAR)
    up = cv2.GaussianBlur(up, (0, 0), sigmaX=_UPSCALE * BLUR_SIGMA, borderType=cv2.BORDER_REPLICATE)
    out = cv2.resize(up, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, 3)
    d = DIFFUSE * block
    if d >= 1:  # frosted glass: every pixel taken from a random neighbour
        mx = np.arange(w, dtype=np.float32)[None, :] + rng.uniform(-d, d, (h, w)).astype(np.float32)
        my = np.arange(h, dtype=np.float32)[:, None] + rng.uniform(-d, d, (h, w)).astype(np.float32)
        out = cv2.remap(out, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
    if GRAIN:
        out = out + rng.normal(0.0, GRAIN, (h, w, 1)).astype(np.float32)
    return np.clip(out, 0.0, 255.0)
