"""Hide a list of detections in an image, each overlapping area exactly once.

Regions sharing a look (style + colour) are grouped; within a group, regions whose
rectangles touch form a cluster that gets ONE combined alpha (the max of its members)
and ONE blend with the image, so overlaps are neither hidden twice nor seamed. Each
member's replacement pixels are rendered from the source at its own scale (see
:mod:`veil.masking.styles`) and averaged by alpha where they overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from veil.detection.types import Detection
from veil.masking.shapes import RegionMask, region_mask
from veil.masking.styles import block_alpha, render
from veil.pipeline.options import Options

_STRIP = 256
#: Groups are blended bottom-up: people, then plates, then heads and faces on top.
_LAYER = {"person": 0, "plate": 1, "head": 2, "face": 3}


@dataclass
class MaskedRegion:
    """What was hidden and how, for the report."""

    target: str
    score: float
    box: tuple[float, float, float, float]
    style: str
    shape: str
    fallback: str | None = None
    #: Why it was hidden: ``detect`` (engine), ``manual`` (given regions) or ``verify``.
    stage: str = "detect"

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "score": round(float(self.score), 4),
            "box": [round(float(v), 1) for v in self.box],
            "style": self.style,
            "shape": self.shape,
            "fallback": self.fallback,
            "stage": self.stage,
        }


@dataclass
class _Item:
    det: Detection
    mask: RegionMask
    style: str
    color: tuple[int, int, int]


def mask_detections(
    rgb: np.ndarray,
    detections: Sequence[Detection],
    options: Options,
    *,
    strength: int | None = None,
    stage: str = "detect",
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, list[MaskedRegion]]:
    """A masked copy of ``rgb`` (uint8 HxWx3) and one :class:`MaskedRegion` per region hidden."""
    height, width = rgb.shape[:2]
    strength = options.strength if strength is None else strength
    rng = rng if rng is not None else np.random.default_rng()
    groups: dict[tuple, list[_Item]] = {}
    regions: list[MaskedRegion] = []
    for det in detections:
        ts = options.style_for(det.target)
        mask = region_mask(det, ts.shape, margin=options.margin, feather=options.feather, width=width, height=height)
        if mask is None:
            continue
        color = tuple(ts.color)
        groups.setdefault((ts.style, color if ts.style == "fill" else None), []).append(_Item(det, mask, ts.style, color))
        box = tuple(float(min(max(v, 0), lim)) for v, lim in zip(det.box, (width, height, width, height), strict=True))
        regions.append(MaskedRegion(det.target, float(det.score), box, ts.style, mask.shape, mask.fallback, stage))
    out = rgb.copy()
    order = sorted(groups.values(), key=lambda items: min(_LAYER.get(i.det.target, 0) for i in items))
    for items in order:
        for cluster in _clusters(items):
            _blend_cluster(out, rgb, cluster, strength, rng)
    return out, regions


def _clusters(items: list[_Item]) -> list[list[_Item]]:
    """Connected components of overlapping rectangles (union-find over a numpy overlap matrix,
    so thousands of manual regions stay fast)."""
    r = np.array([i.mask.rect for i in items], dtype=np.int64).reshape(-1, 4)
    overlap = ((r[:, None, 0] < r[None, :, 2]) & (r[None, :, 0] < r[:, None, 2])
               & (r[:, None, 1] < r[None, :, 3]) & (r[None, :, 1] < r[:, None, 3]))  # fmt: skip
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in np.argwhere(np.triu(overlap, 1)):
        parent[find(int(i))] = find(int(j))
    comps: dict[int, list[_Item]] = {}
    for i, item in enumerate(items):
        comps.setdefault(find(i), []).append(item)
    return list(comps.values())


def _blend_cluster(out: np.ndarray, src: np.ndarray, cluster: list[_Item], strength: int, rng) -> None:
    """One alpha and one blend for the cluster; members' renders averaged by alpha."""
    x0 = min(i.mask.rect[0] for i in cluster)
    y0 = min(i.mask.rect[1] for i in cluster)
    x1 = max(i.mask.rect[2] for i in cluster)
    y1 = max(i.mask.rect[3] for i in cluster)
    renders = []
    for item in cluster:
        rx0, ry0, rx1, ry1 = item.mask.rect
        a = item.mask.alpha
        if item.style == "pixelate":
            a = block_alpha(a, item.mask.size, strength)
        pix = render(src[ry0:ry1, rx0:rx1], item.style, size=item.mask.size, strength=strength, color=item.color, rng=rng)
        renders.append(((slice(ry0 - y0, ry1 - y0), slice(rx0 - x0, rx1 - x0)), a, pix))
    region = out[y0:y1, x0:x1]
    height, width = region.shape[:2]
    for r0 in range(0, height, _STRIP):  # strips keep the float buffers of huge regions small
        r1 = min(height, r0 + _STRIP)
        alpha = np.zeros((r1 - r0, width), np.float32)
        weight = np.zeros((r1 - r0, width), np.float32)
        acc = np.zeros((r1 - r0, width, 3), np.float32)
        for (ys, xs), a, pix in renders:
            lo, hi = max(ys.start, r0), min(ys.stop, r1)
            if lo >= hi:
                continue
            aa = a[lo - ys.start : hi - ys.start]
            sub = (slice(lo - r0, hi - r0), xs)
            acc[sub] += pix[lo - ys.start : hi - ys.start] * aa[:, :, None]
            weight[sub] += aa
            np.maximum(alpha[sub], aa, out=alpha[sub])
        shown = acc / np.maximum(weight, 1e-6)[:, :, None]
        base = region[r0:r1].astype(np.float32)
        region[r0:r1] = (base + (shown - base) * alpha[:, :, None] + 0.5).astype(np.uint8)
