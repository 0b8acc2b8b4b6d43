"""How a hidden region looks: ``blur`` (default), ``pixelate`` or ``fill``.

Irreversible by construction, at every strength. ``blur`` and ``pixelate`` never
filter the original pixels (a plain Gaussian blur can be partly deconvolved); they
first *destroy* the detail, then show what is left:

1. the region is averaged down to a handful of blocks: 4 blocks across the object at
   strength 0, 2 at strength 100 (see :data:`BLOCKS`; the object's size is the
   geometric mean of its box sides), so the block size scales with the object and
   small and large faces look equally hidden. Only those few averaged colours of a
   face survive, far too few to identify anyone;
2. the block colours are quantized (:data:`QUANT` levels per step); ``blur`` dithers
   that rounding with random noise first, so the exact averages cannot be recovered
   either, and averaging many maskings of the same photo converges to the block
   averages, never back towards the face;
3. only then is the result shown: ``pixelate`` as square blocks, each the (quantized)
   mean of exactly the pixels it covers; ``blur`` interpolated smoothly between the
   block colours and Gaussian-blurred at the block scale, so it looks like a plain
   strong blur with no grain (all randomness is at the block scale, then blurred).

Nothing finer than one block reaches the output, so deconvolution has nothing to
restore. ``fill`` replaces the region with one colour. The work arrays are a few
pixels per block, so a full-frame person costs no more than a face.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Blocks across the object at strength 0 and at strength 100.
BLOCKS = {"blur": (4.0, 2.0), "pixelate": (4.5, 2.5)}
MIN_BLOCK_PX = 2.0
#: Quantization step (0-255 levels) of the block colours; ``blur`` dithers it.
QUANT = {"blur": 8, "pixelate": 4}
#: ``blur``: Gaussian sigma, in blocks, applied after interpolating between blocks.
BLUR_SIGMA = 0.5
#: ``blur`` is smoothed at this many samples per block, then resized to the region.
_UPSCALE = 8


def block_size(size: float, strength: int, style: str = "blur") -> float:
    """Side in px of one averaged block for an object of ``size`` px."""
    at0, at100 = BLOCKS.get(style, BLOCKS["blur"])
    blocks = at0 + (at100 - at0) * min(max(strength, 0), 100) / 100.0
    return max(MIN_BLOCK_PX, size / blocks)


def _grid(w: int, h: int, block: float) -> tuple[int, int]:
    return max(1, int(round(w / block))), max(1, int(round(h / block)))


def _edges(n: int, cells: int) -> np.ndarray:
    """Integer start of each of ``cells`` near-equal cells over ``n`` pixels."""
    return np.floor(np.arange(cells) * (n / cells)).astype(np.intp)


def block_means(crop: np.ndarray, block: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact mean colour of each block (float64 ``nh x nw x 3``) and the cells' row and
    column starts: every pixel belongs to exactly one block, with weight one."""
    h, w = crop.shape[:2]
    nw, nh = _grid(w, h, block)
    xs, ys = _edges(w, nw), _edges(h, nh)
    sums = np.add.reduceat(np.add.reduceat(crop, xs, axis=1, dtype=np.uint64), ys, axis=0, dtype=np.uint64)
    counts = np.outer(np.diff(np.append(ys, h)), np.diff(np.append(xs, w)))
    return sums / counts[:, :, None], ys, xs


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
    block = block_size(size, strength, style)
    q = QUANT[style]
    if style == "pixelate":
        means, ys, xs = block_means(crop, block)
        tiles = np.clip(np.round(means / q) * q, 0, 255).astype(np.uint8)
        rows, cols = np.diff(np.append(ys, h)), np.diff(np.append(xs, w))
        return np.repeat(np.repeat(tiles, rows, axis=0), cols, axis=1)
    rng = rng if rng is not None else np.random.default_rng()
    nw, nh = _grid(w, h, block)
    small = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float32).reshape(nh, nw, 3)
    small = np.round((small + rng.uniform(-q / 2, q / 2, small.shape).astype(np.float32)) / q) * q  # dithered
    up = cv2.resize(small, (nw * _UPSCALE, nh * _UPSCALE), interpolation=cv2.INTER_LINEAR)
    up = cv2.GaussianBlur(up, (0, 0), sigmaX=_UPSCALE * BLUR_SIGMA, borderType=cv2.BORDER_REPLICATE)
    up8 = (np.clip(up, 0, 255) + 0.5).astype(np.uint8)  # resized as uint8: 3 bytes per region pixel
    shrink = w < up8.shape[1] or h < up8.shape[0]
    return cv2.resize(up8, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR).reshape(h, w, 3)
