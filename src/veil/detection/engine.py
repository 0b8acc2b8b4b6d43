"""The detection engine: runs the detectors of a preset and merges their boxes.

Contract used by the pipeline, API and web app (kept small and stable)::

    engine = get_engine("balanced")            # cached per process and preset
    dets = engine.detect(rgb, targets=("face", "person", "plate"))

``rgb`` is an upright ``H x W x 3`` uint8 array. The result holds ``face``, ``person`` and
``plate`` detections for the requested targets, plus ``head`` detections (the
consistency signal, see :mod:`veil.detection.consistency`) when faces are requested and
a person's head shows where no face was found.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from typing import Sequence

import numpy as np

from veil.detection.boxes import iou_matrix, neighbours
from veil.detection.consistency import heads_without_faces
from veil.detection.faces import CenterFace, YuNet
from veil.detection.nanodet import VEHICLE_CLASSES, NanoDet, NanoDetOutputs
from veil.detection.presets import Pass, Plan, Preset, get_preset
from veil.detection.text import TextDetector, plate_like
from veil.detection.types import TARGETS, Detection
from veil.detection.yolo import Yolo, merge_regions, tile_regions
from veil.errors import OptionsError
from veil.inference.memory import KEEP_FREED_UNDER, release_freed_memory
from veil.models.registry import get_spec
from veil.models.store import permissive_only

_ENGINES: dict[tuple[str, bool], "Engine"] = {}
_LOCK = threading.Lock()
_FACTORIES = {
    "centerface": CenterFace,
    "yunet": YuNet,
    "nanodet": NanoDet,
    "nanodet-int8": lambda: NanoDet("nanodet-int8"),
    "ppocr-det": TextDetector,
    "face-yolo11m": lambda: Yolo("face-yolo11m", "face"),
    "plate-yolov8n": lambda: Yolo("plate-yolov8n", "plate"),
    "person-yolo11n-pose": lambda: Yolo("person-yolo11n-pose", "person", nkpt=17),
    "person-yolo11n-pose-int8": lambda: Yolo("person-yolo11n-pose-int8", "person", nkpt=17),
}
#: In permissive mode plates come from text found on vehicles (PP-OCR + NanoDet).
PERMISSIVE_PLATE_TEXT_SIZE = 1280


class Engine:
    """Detectors for one preset; models load lazily on first use; ``detect`` is thread-safe."""

    def __init__(self, preset: str = "balanced", permissive: bool | None = None):
        self.preset: Preset = get_preset(preset)
        self.permissive = permissive_only() if permissive is None else permissive
        self._models: dict[str, object] = {}
        self._lock = threading.Lock()

    # -- model access ---------------------------------------------------------------------
    def _model(self, name: str):
        with self._lock:
            m = self._models.get(name)
            if m is None:
                m = self._models[name] = _FACTORIES[name]()
            return m

    def plan(self, target: str) -> Plan:
        """The plan for ``target``, without copyleft-licensed models in permissive mode
        (where the preset names its own permissive face plan, that one)."""
        plan: Plan = getattr(self.preset, target)
        if not self.permissive:
            return plan
        if target == "face" and self.preset.permissive_face is not None:
            plan = self.preset.permissive_face
        passes = tuple(p for p in plan.passes if get_spec(p.model).permissive)
        return dataclasses.replace(plan, passes=passes)

    def model_names(self, targets: Sequence[str] = TARGETS) -> list[str]:
        """Models (name and source package) that ``detect`` uses for ``targets``."""
        names: list[str] = []
        for t in targets:
            plan = self.plan(t)
            names += [p.model for p in plan.passes]
            if t == "plate" and not self.permissive and (plan.evidence_score > 0 or any(p.vehicles for p in plan.passes)):
                names.append("nanodet" if self.vehicles_shared(targets) else plan.vehicle_model)
        if "plate" in targets and self.permissive:
            names += ["ppocr-det", "nanodet"]
        return [f"{n} ({get_spec(n).source})" for n in dict.fromkeys(names)]

    def warm_up(self, targets: Sequence[str] = TARGETS) -> None:
        """Load (and fetch, on first use) every model ``targets`` need."""
        self.detect(np.zeros((64, 64, 3), dtype=np.uint8), targets)
        if "plate" in targets and not self.permissive and not self.vehicles_shared(targets):
            self._model(self.plan("plate").vehicle_model)  # a blank photo has no plate needing it

    def vehicles_shared(self, targets: Sequence[str]) -> bool:
        """Whether the plates' vehicles come from a person pass's NanoDet forward pass (people
        a target, and their plan runs the float NanoDet on the whole photo at the vehicle size)."""
        size = self.plan("plate").vehicle_size
        return "person" in targets and any(p.model == "nanodet" and p.size == size and not p.tiles for p in self.plan("person").passes)

    # -- detection ------------------------------------------------------------------------
    def detect(self, rgb: np.ndarray, targets: Sequence[str] = TARGETS, timings: dict[str, float] | None = None,
               *, trim: bool = True) -> list[Detection]:  # fmt: skip
        """Faces, people and plates in ``rgb`` (plus ``head`` signals, see module doc).

        ``trim`` returns the freed buffers to the system afterwards where the process is over
        its budget (``KEEP_FREED_UNDER``: photos differ in size; under it the next photo
        reuses them); a video's frames are all one size, so its caller trims now and then
        instead."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError("detect() expects an H x W x 3 uint8 RGB array")
        for t in targets:
            if t not in TARGETS:
                raise OptionsError(f"unknown target {t!r}; choose from {', '.join(TARGETS)}", field="targets")
        found: dict[str, list[Detection]] = {}
        cache: dict[tuple[str, int], NanoDetOutputs] = {}  # NanoDet forward passes of this photo
        for t in TARGETS:
            if t not in targets:
                continue
            t0 = time.perf_counter()
            if t == "plate" and self.permissive:
                found[t] = self.plates_from_text(rgb, cache)
            else:
                found[t] = self.run_plan(rgb, t, self.plan(t), cache)
            if timings is not None:
                timings[t] = (time.perf_counter() - t0) * 1000
        out = [d for t in TARGETS for d in found.get(t, [])]
        if "face" in found and "person" in found and self.preset.person_heads:
            out += heads_without_faces(found["person"], found["face"])
        cache.clear()  # NanoDet's outputs, so the trim below can return them too
        if trim:
            release_freed_memory(KEEP_FREED_UNDER)
        return out

    def run_plan(self, rgb: np.ndarray, target: str, plan: Plan, cache: dict[tuple[str, int], NanoDetOutputs] | None = None) -> list[Detection]:
        """Run ``plan``'s passes and vote; ``cache`` shares NanoDet forward passes of this
        photo between plans (person passes, vehicle context of plates)."""
        h, w = rgb.shape[:2]
        cache = {} if cache is None else cache
        cands: list[tuple[int, Detection]] = []
        for i, p in enumerate(plan.passes):
            if p.tiles and not tiles_run(plan, w, h):
                continue
            if p.around_small:
                cands += [(i, d) for d in self.look_around_small(rgb, p, plan, [d for _, d in cands])]
                continue
            if p.vehicles:
                yolo: Yolo = self._model(p.model)  # type: ignore[assignment]
                found = plates_found(cands, plan)
                cands += [(i, d) for d in yolo.regions(rgb, self.vehicle_regions(rgb, plan, p.size, cache, found), p.floor)]
                continue
            cands += [(i, d) for d in self._run_pass(rgb, target, p, plan, cache)]
        out = vote(cands, plan)
        if plan.evidence_score > 0 and any(d.score < plan.evidence_score for d in out):
            vb, vs = self.vehicles(rgb, plan, cache)
            out = with_evidence(out, vb[vs >= plan.evidence_vehicle_score], plan.evidence_score)
        return out

    def look_around_small(self, rgb: np.ndarray, p: Pass, plan: Plan, found: Sequence[Detection]) -> list[Detection]:
        """The second look of an ``around_small`` pass: the photo is cut into tiles at the
        scale of :func:`around_small_scale`; the tiles holding a face of ``found`` at most
        ``p.around_small`` tall run, then the tiles holding the small faces those find, and
        so on (each tile once): a crowd's faces sit next to each other, so the look follows
        the crowd to its edge and costs nothing where there are no small faces. None where
        the whole photo fits one input at ``p.tile_scale`` (the whole-photo pass saw it)."""
        h, w = rgb.shape[:2]
        small = np.array([d.box for d in found if d.height <= p.around_small], np.float32).reshape(-1, 4)
        if not len(small) or max(w, h) <= p.size / p.tile_scale:
            return []
        scale = around_small_scale(small[:, 3] - small[:, 1], p, plan, w, h)
        # neighbouring tiles share twice a small face's height: each small face lies whole in one
        overlap = min(0.2, 2 * p.around_small * scale / p.size)
        grid = tile_regions(w, h, p.size, min_scale=scale, overlap=overlap) or [((0, 0, w, h), scale)]
        tiles = np.array([r for r, _ in grid], np.float32)
        done = np.zeros(len(grid), dtype=bool)
        yolo: Yolo = self._model(p.model)  # type: ignore[assignment]
        out: list[Detection] = []
        while len(small):
            todo = ~done & holding(tiles, small, p.around_small)
            if not todo.any():
                break
            done |= todo
            new = [d for d in yolo.regions(rgb, [grid[k] for k in np.nonzero(todo)[0]], p.floor)
                   if d.height <= p.around_small or d.score >= p.large_floor]  # fmt: skip
            out += new
            small = np.array([d.box for d in new if d.height <= p.around_small], np.float32).reshape(-1, 4)
        return out

    def _nanodet(self, rgb: np.ndarray, size: int, cache: dict[tuple[str, int], NanoDetOutputs], model: str = "nanodet") -> NanoDetOutputs:
        """NanoDet's forward pass of ``model`` at ``size``, run once per photo (``cache``)."""
        fwd = cache.get((model, size))
        if fwd is None:
            nd: NanoDet = self._model(model)  # type: ignore[assignment]
            fwd = cache[model, size] = nd.forward(rgb, size)
        return fwd

    def vehicles(self, rgb: np.ndarray, plan: Plan, cache: dict[tuple[str, int], NanoDetOutputs] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Vehicle boxes and scores (NanoDet at ``plan.vehicle_size``: the person passes'
        forward pass where they ran one, else ``plan.vehicle_model``'s) down to the lower of
        the plan's two vehicle scores: the zoomed crops' and the plates' evidence."""
        cache = {} if cache is None else cache
        shared = ("nanodet", plan.vehicle_size) in cache
        fwd = self._nanodet(rgb, plan.vehicle_size, cache, "nanodet" if shared else plan.vehicle_model)
        boxes, scores, _ = NanoDet.decode(fwd, min(plan.vehicle_score, plan.evidence_vehicle_score), VEHICLE_CLASSES)
        return boxes, scores

    def vehicle_regions(
        self,
        rgb: np.ndarray,
        plan: Plan,
        size: int,
        cache: dict[tuple[str, int], NanoDetOutputs] | None = None,
        found: Sequence[Detection] = (),
    ) -> list[tuple[tuple[int, int, int, int], float]]:
        """Crops for a second look at plates, as ``(region, scale)``: around each vehicle
        (NanoDet at ``plan.vehicle_size``), zoomed so the vehicle is ``plan.vehicle_px`` tall
        in the model's input, at most to the scale of a whole-photo pass at ``size``;
        vehicles that would gain less than ``plan.vehicle_gain`` over the plan's whole-photo
        passes are left out, and so are vehicles holding the centre of a plate of ``found``
        (:func:`plates_found`) that lies on no other of these vehicles: on that vehicle the
        plate has its evidence (``plan.evidence_score``) and stays hidden, so the crop would
        only find it again; the crops go where the whole photo's evidence is weak (no plate
        seen on the vehicle, or one that could be a neighbour's where vehicles overlap).
        Overlapping crops merge and take their largest zoom."""
        h, w = rgb.shape[:2]
        long = max(h, w)
        whole = max((p.size for p in plan.passes if p.size and not (p.tiles or p.vehicles)), default=0) / long
        boxes, scores = self.vehicles(rgb, plan, cache)
        boxes = boxes[scores >= plan.vehicle_score]
        sure = np.array([d.box for d in found], np.float32).reshape(-1, 4)
        boxes = boxes[~spared(boxes, sure)]
        zoom = np.minimum(plan.vehicle_px / np.maximum(boxes[:, 3] - boxes[:, 1], 1.0), size / long)
        keep = zoom >= plan.vehicle_gain * whole
        return merge_regions(boxes[keep], w, h, plan.vehicle_margin, zoom[keep])

    def _run_pass(self, rgb: np.ndarray, target: str, p: Pass, plan: Plan, cache: dict[tuple[str, int], NanoDetOutputs]) -> list[Detection]:
        model = self._model(p.model)
        h, w = rgb.shape[:2]
        if isinstance(model, (CenterFace, YuNet)):
            scale = p.scale
            if p.max_pixels:
                scale = min(scale, math.sqrt(p.max_pixels / (h * w)))
            if p.scale > 1.0:
                scale = min(scale, math.sqrt(plan.upscale_budget / (h * w)))
                if p.min_scale <= 1.0:
                    scale = max(scale, 1.0)  # the best scale affordable, never below 1x
                elif scale < p.min_scale:
                    return []  # too little gain for the cost
            return model(rgb, p.floor, scale)
        if isinstance(model, Yolo):
            if p.tiles:
                regions, whole = tiled_pass(plan, p, w, h)
                return model.run(rgb, whole, p.floor) if whole else model.regions(rgb, regions, p.floor)
            size = p.size
            if p.size_if_tiled and tiles_run(plan, w, h):
                runs = [(t, *tiled_pass(plan, t, w, h)) for t in plan.passes if t.tiles]
                tiled = [(t, whole) for t, regions, whole in runs if regions or whole]
                if tiled and all(t.model == p.model and whole >= p.size_if_tiled for t, whole in tiled):
                    return []  # the tiled passes see the whole photo, its largest faces too
                if tiled:
                    size = p.size_if_tiled  # the tiles see the small faces; this pass only the largest
            return model.run(rgb, size, p.floor)
        if isinstance(model, NanoDet):
            if p.tiles:
                regions, whole = tiled_pass(plan, p, w, h)
                if whole:
                    return model.detections(self._nanodet(rgb, whole, cache, p.model), p.floor, target)
                out: list[Detection] = []
                for (x0, y0, x1, y1), s in regions:
                    fwd = model.forward(np.ascontiguousarray(rgb[y0:y1, x0:x1]), max(32, round(max(x1 - x0, y1 - y0) * s)))
                    out += [d.scaled(1, 1, x0, y0).clipped(w, h) for d in model.detections(fwd, p.floor, target)]
                return out
            return model.detections(self._nanodet(rgb, p.size, cache, p.model), p.floor, target)
        raise TypeError(f"model {p.model!r} cannot run a {target} pass")  # pragma: no cover

    def plates_from_text(self, rgb: np.ndarray, cache: dict[tuple[str, int], NanoDetOutputs] | None = None) -> list[Detection]:
        """Permissive plate route: text lines on a vehicle, or plate-shaped text anywhere
        when no vehicle is in view (close-ups of a car's rear)."""
        text: TextDetector = self._model("ppocr-det")  # type: ignore[assignment]
        nd: NanoDet = self._model("nanodet")  # type: ignore[assignment]
        vehicles = nd.detections(self._nanodet(rgb, 640, {} if cache is None else cache), 0.25, target="vehicle")
        vb = np.array([v.box for v in vehicles], dtype=np.float32).reshape(-1, 4)
        lines = [d for d in text(rgb, size=PERMISSIVE_PLATE_TEXT_SIZE) if plate_like(d)]
        on = centres_on(vb, [d.box for d in lines]).any(axis=0)
        return [
            Detection("plate", d.score, d.box, polygon=d.polygon, source="ppocr-det+nanodet")
            for d, on_vehicle in zip(lines, on)
            if on_vehicle or not len(vb)
        ]


def around_small_scale(heights: np.ndarray, p: Pass, plan: Plan, width: int, height: int) -> float:
    """The scale of ``p``'s look around small faces of these ``heights``: enough for the
    smallest of them (10th percentile) to reach ``p.small_px``, never below ``p.tile_scale``
    and above it at most as far as ``plan.upscale_budget`` input pixels for the whole photo
    allow (the look may cover all of it)."""
    if not p.small_px or not len(heights):
        return p.tile_scale
    want = p.small_px / max(float(np.percentile(heights, 10)), 1.0)
    cap = max(p.tile_scale, math.sqrt(plan.upscale_budget / (width * height)))
    return float(min(max(want, p.tile_scale), cap))


def centres_on(regions: np.ndarray, boxes: np.ndarray, reach: float = 0.0) -> np.ndarray:
    """``(R, N)``: whether region ``r`` of ``regions`` (R, 4: tiles, vehicles), its edges
    grown by ``reach`` pixels, holds the centre of box ``n`` of ``boxes`` (N, 4)."""
    regions, boxes = (np.asarray(a).reshape(-1, 4) for a in (regions, boxes))
    # centres compared in the regions' precision, as a scalar centre against them would be
    cx, cy = (((boxes[:, i] + boxes[:, i + 2]) / 2).astype(regions.dtype, copy=False) for i in (0, 1))
    x0, y0, x1, y1 = (regions[:, k : k + 1] for k in range(4))
    return (x0 - reach <= cx) & (cx <= x1 + reach) & (y0 - reach <= cy) & (cy <= y1 + reach)


def holding(regions: np.ndarray, boxes: np.ndarray, reach: float) -> np.ndarray:
    """Whether each of ``regions`` (R, 4: tiles, vehicles) holds the centre of one of
    ``boxes`` (N, 4), its edges grown by ``reach`` pixels."""
    return centres_on(regions, boxes, reach).any(axis=1)


#: vehicle boxes overlapping at least this much (IoU) are one vehicle seen twice (NanoDet
#: keeps a box per class: a van as car and truck)
SAME_VEHICLE_IOU = 0.5


def spared(vehicles: np.ndarray, plates: np.ndarray) -> np.ndarray:
    """Whether each of ``vehicles`` (V, 4) holds the centre of one of ``plates`` (P, 4) that
    lies on no other vehicle: that vehicle's plate was found. A plate on two overlapping
    vehicles (dense traffic, a parking row) may be either one's, so neither is spared; boxes
    of one vehicle seen twice (``SAME_VEHICLE_IOU``) count as one."""
    if not len(vehicles) or not len(plates):
        return np.zeros(len(vehicles), dtype=bool)
    on = centres_on(vehicles, plates)  # (V, P)
    other = iou_matrix(vehicles, vehicles) < SAME_VEHICLE_IOU  # (V, V): distinct vehicles
    contested = (other.astype(np.int32) @ on.astype(np.int32)) > 0  # (V, P): p also on a distinct vehicle
    return (on & ~contested).any(axis=1)


def plates_found(cands: Sequence[tuple[int, Detection]], plan: Plan) -> list[Detection]:
    """The candidates (``(pass index, detection)``) that spare a vehicle its zoomed crop:
    those the vote keeps on their own (their pass's ``accept``) and at least
    ``plan.vehicle_found_score`` sure, so a faint box (a badge, a grille's text) does not
    stand in for the plate a crop would find."""
    return [d for k, d in cands if d.score >= max(plan.passes[k].accept, plan.vehicle_found_score)]


def tiles_run(plan: Plan, width: int, height: int) -> bool:
    """Whether ``plan``'s tiled passes run on a photo of this size (``Plan.tile_above``)."""
    return width * height > plan.tile_above * 1e6


def tiles_whole(plan: Plan, p: Pass, width: int, height: int) -> bool:
    """Whether tiled pass ``p`` runs as one pass over the whole photo at its tile scale
    (``Plan.tiles_whole_up_to``)."""
    return p.tile_scale > 0 and width * height * p.tile_scale**2 <= plan.tiles_whole_up_to


def tiled_pass(plan: Plan, p: Pass, width: int, height: int) -> tuple[list[tuple[tuple[int, int, int, int], float]], int]:
    """How tiled pass ``p`` runs on a photo of this size: ``(tiles, 0)``, or ``([], size)``
    where the tiles run as one pass over the whole photo at that input size
    (:func:`tiles_whole`); ``([], 0)``: not at all (the whole photo fits at its scale)."""
    regions = tile_regions(width, height, p.size, min_scale=p.tile_scale)
    if regions and tiles_whole(plan, p, width, height):
        return [], round(max(width, height) * p.tile_scale)
    return regions, 0


def with_evidence(dets: list[Detection], vehicles: np.ndarray, confident: float) -> list[Detection]:
    """``dets`` scoring at least ``confident``, and the others whose centre lies on one of
    ``vehicles`` (N, 4): a plate is on a vehicle, and plate-like texture elsewhere (print
    on a face mask, a watermark, a zipper) is not a plate."""
    on = centres_on(vehicles, [d.box for d in dets]).any(axis=0)
    return [d for d, o in zip(dets, on) if d.score >= confident or o]


def vote(cands: list[tuple[int, Detection]], plan: Plan) -> list[Detection]:
    """Cluster candidates of all passes; keep a cluster when one pass is sure of it
    (its ``accept``) or when >= 2 passes see it with summed scores >= ``plan.agree``.
    The kept box is the cluster's best-scoring one (geometry such as landmarks and
    keypoints stays consistent with it). Overlaps come from a sorted sweep
    (:func:`~veil.detection.boxes.neighbours`), never an N x N matrix: a crowd yields tens
    of thousands of candidates."""
    if not cands:
        return []
    dets = [d for _, d in cands]
    passes = [i for i, _ in cands]
    boxes = np.array([d.box for d in dets], dtype=np.float32)
    scores = np.array([d.score for d in dets], dtype=np.float32)
    ptr, nbrs = neighbours(boxes, plan.cluster_iou)
    used = np.zeros(len(dets), dtype=bool)
    out: list[Detection] = []
    for i in np.argsort(-scores, kind="stable"):
        if used[i]:
            continue
        members = nbrs[ptr[i] : ptr[i + 1]]
        members = members[~used[members]]
        used[members] = True
        per_pass: dict[int, float] = {}
        for m in members:
            per_pass[passes[m]] = max(per_pass.get(passes[m], 0.0), float(scores[m]))
        sure = any(s >= plan.passes[k].accept for k, s in per_pass.items())
        if sure or (len(per_pass) >= 2 and sum(per_pass.values()) >= plan.agree):
            d = dets[i]
            d.extra["votes"] = len(per_pass)
            out.append(d)
    return out


def get_engine(preset: str = "balanced") -> Engine:
    """The process-wide engine for ``preset`` (sessions are shared between presets)."""
    key = (preset, permissive_only())
    with _LOCK:
        eng = _ENGINES.get(key)
        if eng is None:
            eng = _ENGINES[key] = Engine(preset, permissive=key[1])
        return eng
