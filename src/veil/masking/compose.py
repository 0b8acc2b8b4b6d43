"""Hide a list of detections in an image, each overlapping area exactly once.

Regions are blended in layers, bottom-up: people, then plates, then heads and faces on
top, and each layer is rendered from the image as the layers below left it. A face
inside a hidden person is therefore re-blurred from already blurred pixels and blends
in, instead of showing the sharper face through as an oval. Within a layer, regions
whose rectangles touch form a cluster that gets ONE combined alpha (the max of its
members) and ONE blend with the image, so overlaps are neither hidden twice nor seamed;
members' renders (each at its own object's scale, see :mod:`veil.masking.styles`) are
averaged by alpha where they overlap.

Memory is bounded by the image, whatever the number of regions: regions are planned
as rectangles, clustered by a sorted sweep (no N x N matrix), and each member's alpha
and render exist only while it is added to its cluster's buffers (20 bytes per pixel of
the cluster's rectangle, at most the image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import cv2
import numpy as np

from veil.detection.types import Detection
from veil.masking.shapes import RegionMask, RegionPlan, plan_region
from veil.masking.styles import render

if TYPE_CHECKING:  # type only: masking sits below the pipeline layer
    from veil.pipeline.options import Options

_STRIP = 256
#: Layers blended bottom-up: people, then plates, then heads and faces on top.
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
    index: int
    plan: RegionPlan
    style: str
    color: tuple[int, int, int]
    shown: bool = False


def mask_detections(
    rgb: np.ndarray,
    detections: Sequence[Detection],
    options: "Options",
    *,
    strength: int | None = None,
    stage: str = "detect",
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, list[MaskedRegion]]:
    """A masked copy of ``rgb`` (uint8 HxWx3) and one :class:`MaskedRegion` per region hidden.

    ``rng`` drives the blur's dithering; None draws fresh entropy (production), a seeded
    generator makes the output reproducible (tests).
    """
    height, width = rgb.shape[:2]
    strength = options.strength if strength is None else strength
    rng = rng if rng is not None else np.random.default_rng()
    layers: dict[tuple, list[_Item]] = {}
    regions: list[MaskedRegion | None] = []
    for det in detections:
        ts = options.style_for(det.target)
        plan = _plan(det, ts.shape, options, width, height)
        if plan is None:
            continue
        color = tuple(ts.color)
        key = (_LAYER.get(det.target, 0), det.target, ts.style, color if ts.style == "fill" else None)
        layers.setdefault(key, []).append(_Item(len(regions), plan, ts.style, color))
        box = tuple(float(min(max(v, 0), lim)) for v, lim in zip(det.box, (width, height, width, height), strict=True))
        regions.append(MaskedRegion(det.target, float(det.score), box, ts.style, plan.shape, plan.fallback, stage))
    out = rgb.copy()
    shown: set[int] = set()
    for key in sorted(layers, key=lambda k: k[0]):
        for cluster in _clusters(layers[key]):
            _blend_cluster(out, cluster, strength, rng)
            shown.update(i.index for i in cluster if i.shown)
    return out, [r for i, r in enumerate(regions) if i in shown and r is not None]


def footprints(detections: Sequence[Detection], options: "Options", width: int, height: int, *,
               align: int = 1) -> list[tuple[tuple[int, int, int, int], list[Detection]]]:  # fmt: skip
    """Where :func:`mask_detections` would change pixels: ``(rect, detections)`` per group of
    regions whose rectangles overlap, each rect the union of the group's (grown to multiples
    of ``align``, within the image). Masking a crop of one rect with its detections (moved
    into the crop) changes exactly what masking the whole image with them would: a
    region's render reads only its own rectangle, and the groups' own rectangles do not
    overlap (grown, two may share an edge of unmasked pixels)."""
    items: list[_Item] = []
    dets: list[Detection] = []
    for det in detections:
        plan = _plan(det, options.style_for(det.target).shape, options, width, height)
        if plan is not None:
            items.append(_Item(len(dets), plan, "", (0, 0, 0)))
            dets.append(det)
    out = []
    for group in _clusters(items):
        x0, y0 = (min(i.plan.rect[k] for i in group) // align * align for k in (0, 1))
        x1, y1 = (min(lim, -(-max(i.plan.rect[k] for i in group) // align) * align)
                  for k, lim in ((2, width), (3, height)))  # fmt: skip
        out.append(((x0, y0, x1, y1), [dets[i.index] for i in group]))
    return out


def _plan(det: Detection, shape: str, options: "Options", width: int, height: int) -> RegionPlan | None:
    """The region ``det`` covers under ``options``: one rule for masking and its footprints."""
    return plan_region(det, shape, margin=options.margin, feather=options.feather, width=width, height=height)


def _clusters(items: list[_Item]) -> list[list[_Item]]:
    """Connected components of overlapping rectangles, by a sweep along x: each rectangle
    is compared only with those still open at its left edge, and components are merged
    by relabelling (vectorised), so thousands of regions stay fast and small."""
    if len(items) <= 1:
        return [items] if items else []
    r = np.array([i.plan.rect for i in items], dtype=np.int64)
    order = np.argsort(r[:, 0], kind="stable")
    label = np.arange(len(items))
    active = np.empty(0, dtype=np.int64)
    for i in order:
        x0, y0, _x1, y1 = r[i]
        active = active[r[active, 2] > x0]  # close rectangles that end before this one starts
        hit = active[(r[active, 1] < y1) & (y0 < r[active, 3])]
        if hit.size:
            labs = np.unique(label[hit])
            label[i] = labs[0]
            if labs.size > 1:
                label[np.isin(label, labs[1:])] = labs[0]
        active = np.append(active, i)
    comps: dict[int, list[_Item]] = {}
    for i, item in enumerate(items):
        comps.setdefault(int(label[i]), []).append(item)
    return list(comps.values())


def _blend_cluster(out: np.ndarray, cluster: list[_Item], strength: int, rng: np.random.Generator) -> None:
    """One alpha and one blend for the cluster; members' renders averaged by alpha.

    Members are rendered from ``out`` before the cluster writes to it, one at a time:
    only the cluster's accumulators outlive a member.
    """
    if cluster[0].style == "fill":  # one colour per layer: the average of renders is that colour
        _blend_fill(out, cluster)
        return
    if len(cluster) == 1:
        _blend_one(out, cluster[0], strength, rng)
        return
    x0, y0, x1, y1 = _union(cluster)
    alpha = np.zeros((y1 - y0, x1 - x0), np.float32)
    weight = np.zeros((y1 - y0, x1 - x0), np.float32)
    acc = np.zeros((y1 - y0, x1 - x0, 3), np.float32)
    for item, m in _masks(cluster):
        rx0, ry0, rx1, ry1 = m.rect
        pix = render(out[ry0:ry1, rx0:rx1], item.style, size=m.size, strength=strength, color=item.color, rng=rng)
        tmp = np.empty((min(_STRIP, ry1 - ry0), rx1 - rx0, 3), np.float32)
        for r0 in range(0, ry1 - ry0, _STRIP):  # strips keep the float temporaries small
            r1 = min(ry1 - ry0, r0 + _STRIP)
            a, t = m.alpha[r0:r1], tmp[: r1 - r0]
            sub = (slice(ry0 - y0 + r0, ry0 - y0 + r1), slice(rx0 - x0, rx1 - x0))
            np.multiply(pix[r0:r1], a[:, :, None], out=t)
            acc[sub] += t
            weight[sub] += a
            np.maximum(alpha[sub], a, out=alpha[sub])
        del m, pix
    region = out[y0:y1, x0:x1]
    for r0 in range(0, y1 - y0, _STRIP):
        r1 = min(y1 - y0, r0 + _STRIP)
        shown = acc[r0:r1] / np.maximum(weight[r0:r1], 1e-6)[:, :, None]
        _mix(region[r0:r1], shown, alpha[r0:r1])


def _masks(cluster: list[_Item]) -> Iterator[tuple[_Item, RegionMask]]:
    """Each member with its mask, built one at a time (members with no pixel skipped)."""
    for item in cluster:
        m = item.plan.mask()
        if m is not None:
            item.shown = True
            yield item, m
            del m  # the caller drops its own reference before asking for the next


def _union(cluster: list[_Item]) -> tuple[int, int, int, int]:
    """The rectangle holding every member's plan."""
    rects = [i.plan.rect for i in cluster]
    return min(r[0] for r in rects), min(r[1] for r in rects), max(r[2] for r in rects), max(r[3] for r in rects)


def _blend_one(out: np.ndarray, item: _Item, strength: int, rng: np.random.Generator) -> None:
    """A lone region: blended straight from its render (no accumulators)."""
    m = item.plan.mask()
    if m is None:
        return
    item.shown = True
    rx0, ry0, rx1, ry1 = m.rect
    region = out[ry0:ry1, rx0:rx1]
    pix = render(region, item.style, size=m.size, strength=strength, color=item.color, rng=rng)
    for r0 in range(0, ry1 - ry0, _STRIP):
        r1 = min(ry1 - ry0, r0 + _STRIP)
        _mix(region[r0:r1], pix[r0:r1], m.alpha[r0:r1])


def _blend_fill(out: np.ndarray, cluster: list[_Item]) -> None:
    """A cluster of one fill colour: only the members' combined alpha is built (4 bytes per
    pixel) and the colour is drawn through it; no member is rendered."""
    x0, y0, x1, y1 = _union(cluster)
    alpha = np.zeros((y1 - y0, x1 - x0), np.float32)
    for _item, m in _masks(cluster):
        rx0, ry0, rx1, ry1 = m.rect
        sub = alpha[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0]
        np.maximum(sub, m.alpha, out=sub)
        del m
    binary = all(i.plan.feather_px < 0.5 for i in cluster)  # unfeathered: alpha is 0 or 1
    region = out[y0:y1, x0:x1]
    for r0 in range(0, y1 - y0, _STRIP):
        r1 = min(y1 - y0, r0 + _STRIP)
        a, base = alpha[r0:r1], region[r0:r1]
        solid = np.empty_like(base)
        cv2.rectangle(solid, (0, 0), (solid.shape[1], solid.shape[0]), cluster[0].color, -1)
        if binary:
            cv2.copyTo(solid, cv2.compare(a, 0.5, cv2.CMP_GT), base)  # in place, also on a view
        else:
            _mix(base, solid, a)


def _mix(base: np.ndarray, shown: np.ndarray, alpha: np.ndarray) -> None:
    """``base`` (uint8, in place) moved towards ``shown`` by ``alpha`` (OpenCV's blend:
    no float copies of the pixels, ~4x faster than numpy on a video frame)."""
    if shown.dtype != np.uint8:
        shown = (shown + 0.5).astype(np.uint8)
    alpha = np.ascontiguousarray(alpha)
    base[...] = cv2.blendLinear(shown, np.ascontiguousarray(base), alpha, 1.0 - alpha).reshape(base.shape)
