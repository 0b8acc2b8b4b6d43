"""The area to hide for one detection, as a soft alpha local to its bounding rectangle.

Shapes: ``box``; ``ellipse`` (inscribed in the enlarged box, the default for faces and
heads); ``mask``, the object's own outline: a face oval from its 5 landmarks (eyes, nose,
mouth corners; never smaller than the raw box's ellipse), a plate's polygon, a person's
silhouette (keypoint hull widened by the limbs' thickness). When that geometry is
missing the shape falls back to ellipse for faces and heads and box otherwise, and the
fallback is recorded for the report.

Faces and heads grow by ``Options.margin`` around their centre; other targets by a
small fixed margin. Feathering ramps alpha from 1 to 0 *outside* the shape, so the
shape itself is always fully hidden and the margin is never eaten by the soft edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from veil.detection.types import Detection

FACE_LIKE = ("face", "head")
#: Fixed growth for targets whose box is already tight (plates) or large (people).
FIXED_MARGIN = {"person": 1.05, "plate": 1.1}
DEFAULT_FIXED_MARGIN = 1.1
#: Feather 1.0 ramps over a quarter of the object's size.
FEATHER_SCALE = 0.25
#: Person keypoints below this confidence are ignored for the silhouette.
KEYPOINT_MIN_CONF = 0.3
#: Rows rasterized at once.
_ROWS = 256


@dataclass
class RegionMask:
    """Alpha (float32, 0-1) of one region, placed at ``(x0, y0)`` in the image."""

    x0: int
    y0: int
    alpha: np.ndarray
    shape: str
    fallback: str | None
    size: float  #: object scale in px (geometric mean of the box sides), for strength

    @property
    def rect(self) -> tuple[int, int, int, int]:
        h, w = self.alpha.shape
        return (self.x0, self.y0, self.x0 + w, self.y0 + h)


def margin_for(target: str, margin: float) -> float:
    return margin if target in FACE_LIKE else FIXED_MARGIN.get(target, DEFAULT_FIXED_MARGIN)


# -- outlines: each returns ("ellipse", (cx, cy, a, b, angle)) or ("poly", Nx2 array) ---------
def _box_outline(cx: float, cy: float, w: float, h: float) -> tuple[str, np.ndarray]:
    return "poly", np.array([[cx - w / 2, cy - h / 2], [cx + w / 2, cy - h / 2],
                             [cx + w / 2, cy + h / 2], [cx - w / 2, cy + h / 2]], dtype=np.float64)  # fmt: skip


def _face_oval(det: Detection, m: float) -> tuple | None:
    """An oval around the face from 5 landmarks, rotated with the eye line."""
    pts = det.landmarks
    if pts is None:
        return None
    pts = np.asarray(pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] < 5 or pts.shape[1] < 2 or not np.isfinite(pts[:5, :2]).all():
        return None
    le, re_, _nose, lm, rm = pts[:5, :2]
    eye_mid, mouth_mid = (le + re_) / 2, (lm + rm) / 2
    iod = float(np.hypot(*(re_ - le)))
    angle = math.atan2(re_[1] - le[1], re_[0] - le[0])
    down = np.array([-math.sin(angle), math.cos(angle)])  # perpendicular to the eye line
    em = float(np.dot(mouth_mid - eye_mid, down))
    if iod < 1.0 or em < 1.0:
        return None
    center = eye_mid + down * (0.3 * em)  # forehead ~1.3 em above the eyes, chin ~1.9 em below
    a = max(1.1 * iod * m, det.width / 2)
    b = max(1.6 * em * m, det.height / 2)
    return (float(center[0]), float(center[1]), a, b, math.degrees(angle))


def _scaled_polygon(poly: np.ndarray | None, m: float) -> np.ndarray | None:
    if poly is None:
        return None
    p = np.asarray(poly, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 3 or p.shape[1] < 2 or not np.isfinite(p[:, :2]).all():
        return None
    p = p[:, :2]
    c = p.mean(axis=0)
    return c + (p - c) * m


def _person_hull(det: Detection) -> tuple[np.ndarray, float] | None:
    """Convex hull of the confident keypoints and how far to widen it (limb thickness)."""
    kp = det.keypoints
    if kp is None:
        return None
    kp = np.asarray(kp, dtype=np.float64)
    if kp.ndim != 2 or kp.shape[1] < 2:
        return None
    conf = kp[:, 2] if kp.shape[1] >= 3 else np.ones(len(kp))
    pts = kp[(conf >= KEYPOINT_MIN_CONF) & np.isfinite(kp[:, :2]).all(axis=1), :2]
    if len(pts) < 3:
        return None
    hull = cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    if cv2.contourArea(hull.astype(np.float32)) < 1.0:
        return None
    return hull, 0.12 * max(det.width, det.height)


@dataclass
class RegionPlan:
    """Where one region lies and how it is drawn, before any pixel is rasterized: cheap
    enough to plan thousands of regions at once (the alpha is made one at a time)."""

    rect: tuple[int, int, int, int]
    shape: str
    fallback: str | None
    size: float
    outline: tuple[str, object]
    widen: float
    clip_box: tuple[float, float, float, float] | None
    feather_px: float

    def mask(self) -> RegionMask | None:
        """The region's alpha; None when the outline covers no pixel centre."""
        rx0, ry0, rx1, ry1 = self.rect
        core = _rasterize(self.outline, rx0, ry0, rx1 - rx0, ry1 - ry0, self.widen)
        if self.clip_box is not None:
            cb = self.clip_box
            cx0, cy0 = int(math.floor(cb[0])) - rx0, int(math.floor(cb[1])) - ry0
            cx1, cy1 = int(math.ceil(cb[2])) - rx0, int(math.ceil(cb[3])) - ry0
            clipped = np.zeros_like(core)
            clipped[max(cy0, 0) : max(cy1, 0), max(cx0, 0) : max(cx1, 0)] = 1
            core &= clipped
        if not core.any():
            return None
        return RegionMask(rx0, ry0, _feathered(core, self.feather_px), self.shape, self.fallback, self.size)


def plan_region(
    det: Detection, shape: str, *, margin: float, feather: float, width: int, height: int
) -> RegionPlan | None:
    """The outline and rectangle to hide ``det`` with ``shape``; None when it lies outside the image."""
    x1, y1, x2, y2 = (float(v) for v in det.box)
    w, h = max(0.0, x2 - x1), max(0.0, y2 - y1)
    if w < 1 or h < 1:
        return None
    m = margin_for(det.target, margin)
    cx, cy, mw, mh = (x1 + x2) / 2, (y1 + y2) / 2, w * m, h * m
    size = math.sqrt(w * h)
    fallback: str | None = None
    widen = 0.0
    clip_box = None
    outline: tuple[str, object]
    if shape == "box":
        outline = _box_outline(cx, cy, mw, mh)
    elif shape == "ellipse":
        outline = ("ellipse", (cx, cy, mw / 2, mh / 2, 0.0))
    else:  # mask: the object's own outline
        oval = _face_oval(det, m) if det.target in FACE_LIKE else None
        hull = _person_hull(det) if det.target == "person" else None
        poly = _scaled_polygon(det.polygon, m)
        if oval is not None:
            outline = ("ellipse", oval)
        elif hull is not None:
            outline, widen, clip_box = ("poly", hull[0]), hull[1], (cx - mw / 2, cy - mh / 2, cx + mw / 2, cy + mh / 2)
        elif poly is not None:
            outline = ("poly", poly)
        else:
            fallback = "ellipse" if det.target in FACE_LIKE else "box"
            outline = ("ellipse", (cx, cy, mw / 2, mh / 2, 0.0)) if fallback == "ellipse" else _box_outline(cx, cy, mw, mh)
    fw = float(feather) * FEATHER_SCALE * size
    bx0, by0, bx1, by1 = _bounds(outline)
    pad = fw + widen + 1.0
    rx0, ry0 = max(0, int(math.floor(bx0 - pad))), max(0, int(math.floor(by0 - pad)))
    rx1, ry1 = min(width, int(math.ceil(bx1 + pad))), min(height, int(math.ceil(by1 + pad)))
    if rx1 <= rx0 or ry1 <= ry0:
        return None
    return RegionPlan((rx0, ry0, rx1, ry1), fallback or shape, fallback, size, outline, widen, clip_box, fw)


def region_mask(
    det: Detection, shape: str, *, margin: float, feather: float, width: int, height: int
) -> RegionMask | None:
    """The alpha to hide ``det`` with ``shape``; None when it lies outside the image."""
    plan = plan_region(det, shape, margin=margin, feather=feather, width=width, height=height)
    return None if plan is None else plan.mask()


def _bounds(outline: tuple[str, object]) -> tuple[float, float, float, float]:
    kind, geo = outline
    if kind == "poly":
        p = np.asarray(geo)
        return float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())
    cx, cy, a, b, ang = geo  # type: ignore[misc]
    t = math.radians(ang)
    ex = math.hypot(a * math.cos(t), b * math.sin(t))
    ey = math.hypot(a * math.sin(t), b * math.cos(t))
    return cx - ex, cy - ey, cx + ex, cy + ey


def _rasterize(outline: tuple[str, object], x0: int, y0: int, w: int, h: int, widen: float) -> np.ndarray:
    """Binary (uint8) mask of the outline in the local ``w x h`` window at ``(x0, y0)``."""
    kind, geo = outline
    if kind == "ellipse":
        cx, cy, a, b, ang = geo  # type: ignore[misc]
        if ang == 0:  # upright: each row is one span, |dx| <= a * sqrt(1 - dy^2 / b^2)
            dy = np.arange(h, dtype=np.float64) + y0 + 0.5 - cy
            half = a * np.sqrt(np.maximum(1.0 - (dy / b) ** 2, 0.0))
            half[np.abs(dy) > b] = -1.0  # rows beyond the ellipse: no pixel
            dx = np.abs(np.arange(w, dtype=np.float64) + x0 + 0.5 - cx)
            return (dx[None, :] <= half[:, None]).view(np.uint8)
        t = math.radians(ang)
        c, s = math.cos(t), math.sin(t)
        xs = (np.arange(w, dtype=np.float64) + x0 + 0.5 - cx)[None, :]
        out = np.empty((h, w), dtype=np.uint8)
        for r0 in range(0, h, _ROWS):  # in strips: the float temporaries stay small on huge regions
            ys = (np.arange(r0, min(h, r0 + _ROWS), dtype=np.float64) + y0 + 0.5 - cy)[:, None]
            u, v = (xs * c + ys * s) / a, (ys * c - xs * s) / b
            out[r0 : r0 + len(ys)] = u * u + v * v <= 1.0
        return out
    mask = np.zeros((h, w), dtype=np.uint8)
    shift = 4
    pts = np.round((np.asarray(geo) - (x0, y0)) * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=shift)
    if widen > 0:  # Minkowski sum with a disc: thick round-capped strokes along the outline
        cv2.polylines(mask, [pts], True, 1, thickness=max(1, int(round(2 * widen))), lineType=cv2.LINE_8, shift=shift)
    return mask


def _feathered(core: np.ndarray, fw: float) -> np.ndarray:
    """1 inside ``core``, falling linearly to 0 at ``fw`` px outside it."""
    if fw < 0.5:
        return core.astype(np.float32)
    dist = cv2.distanceTransform(1 - core, cv2.DIST_L2, 5)
    dist *= -1.0 / fw  # in place: a huge region needs one float buffer, not four
    dist += 1.0
    return np.clip(dist, 0.0, 1.0, out=dist)
