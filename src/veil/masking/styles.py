"""How a hidden region looks: ``blur`` (default), ``pixelate`` or ``fill``.

Irreversible by construction, at every strength. ``blur`` and ``pixelate`` never
filter the original pixels (a plain Gaussian blur can be partly deconvolved); they
first *destroy* the detail:

1. the region is averaged down to a handful of blocks (``cv2.INTER_AREA`` is a true
   box average): 4 blocks across the object at strength 0, 2 at strength 100 (see
   :data:`BLOCKS`; the object's size is the geometric mean of its box sides), so the
   block size scales with the object and small and large faces look equally hidden.
   Only those few averaged colours of a face survive, far too few to identify anyone;
2. random noise (from the OS entropy pool, not reproducible) is added to every block,
   so even those averages cannot be recovered exactly;
3. only then is the result shown: ``pixelate`` as square blocks (its outline snapped to
   whole blocks, see :func:`block_alpha`); ``blur`` upsampled smoothly,
   Gaussian-blurred, then diffused (each pixel taken from a random neighbour up to one
   block away) and grained, like frosted glass. The frosting and the snapped outline
   are not decoration: a smooth skin-coloured oval under hair is still "a face" to
   blur-robust CNN detectors, and the verify pass would find every blur again.

``fill`` replaces the region with one colour. Large regions (whole people) are
stylised at a capped working size and resized, so a full-frame person costs no more
than a face.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Blocks across the object at strength 0 and at strength 100.
BLOCKS = {"blur": (4.0, 2.0), "pixelate": (4.5, 2.5)}
MIN_BLOCK_PX = 2.0
#: Standard deviation (0-255 levels) of the noise added to each block.
BLOCK_NOISE = {"blur": 4.0, "pixelate": 10.0}
#: ``blur``: Gaussian sigma (in blocks), diffusion radius (in blocks), grain (levels).
BLUR_SIGMA, DIFFUSE, GRAIN = 0.6, 1.0, 18.0
#: Longest side at which ``blur`` is stylised; larger regions are resized afterwards.
WORK_MAX = 768
#: ``blur`` is smoothed at this many pixels per block (cheap at any size).
_UPSCALE = 8


def block_size(size: float, strength: int, style: str = "blur") -> float:
    """Side in px of one averaged block for an object of ``size`` px."""
    at0, at100 = BLOCKS.get(style, BLOCKS["blur"])
    blocks = at0 + (at100 - at0) * min(max(strength, 0), 100) / 100.0
    return max(MIN_BLOCK_PX, size / blocks)


def _grid(w: int, h: int, block: float) -> tuple[int, int]:
    return max(1, int(round(w / block))), max(1, int(round(h / block)))


def block_alpha(alpha: np.ndarray, size: float, strength: int) -> np.ndarray:
    """``pixelate``'s alpha snapped to its block grid: a block is as opaque as its most
    opaque pixel, so the outline is a staircase of whole blocks, not a smooth oval."""
    h, w = alpha.shape
    nw, nh = _grid(w, h, block_size(size, strength, "pixelate"))
    # the same cell edges as cv2's nearest-neighbour upscaling in render()
    xs = np.unique(np.floor(np.arange(nw) * (w / nw)).astype(int))
    ys = np.unique(np.floor(np.arange(nh) * (h / nh)).astype(int))
    cells = np.maximum.reduceat(np.maximum.reduceat(alpha, xs, axis=1), ys, axis=0)
    return np.repeat(np.repeat(cells, np.diff(np.append(ys, h)), axis=0), np.diff(np.append(xs, w)), axis=1)


def _destroyed(crop: np.ndarray, block: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """The crop box-averaged down to blocks of ``block`` px, plus noise (float32)."""
    h, w = crop.shape[:2]
    nw, nh = _grid(w, h, block)
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
    """The replacement pixels (uint8, same shape as ``crop``) for one object."""
    h, w = crop.shape[:2]
    if style == "fill":
        return np.full((h, w, 3), color, dtype=np.uint8)
    if style not in BLOCKS:
        raise ValueError(f"unknown style {style!r}")
    rng = rng if rng is not None else np.random.default_rng()
    block = block_size(size, strength, style)
    small = np.clip(_destroyed(crop, block, BLOCK_NOISE[style], rng), 0, 255)
    if style == "pixelate":
        return cv2.resize((small + 0.5).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).reshape(h, w, 3)
    scale = min(1.0, WORK_MAX / max(h, w))
    ww, wh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    nh, nw = small.shape[:2]
    up = cv2.resize(small, (nw * _UPSCALE, nh * _UPSCALE), interpolation=cv2.INTER_LINEAR)
    up = cv2.GaussianBlur(up, (0, 0), sigmaX=_UPSCALE * BLUR_SIGMA, borderType=cv2.BORDER_REPLICATE)
    work = cv2.resize(up, (ww, wh), interpolation=cv2.INTER_LINEAR).reshape(wh, ww, 3)
    d = DIFFUSE * block * scale
    if d >= 1:  # frosted glass: every pixel taken from a random neighbour
        mx = np.arange(ww, dtype=np.float32)[None, :] + rng.uniform(-d, d, (wh, ww)).astype(np.float32)
        my = np.arange(wh, dtype=np.float32)[:, None] + rng.uniform(-d, d, (wh, ww)).astype(np.float32)
        work = cv2.remap(work, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
    if GRAIN:
        work += rng.normal(0.0, GRAIN, (wh, ww, 1)).astype(np.float32)
    out = (np.clip(work, 0, 255) + 0.5).astype(np.uint8)
    if (ww, wh) != (w, h):
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, 3)
    return out
