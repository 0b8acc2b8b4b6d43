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

import math
import threading
import time
from typing import Sequence

import numpy as np

from veil.detection.boxes import iou_matrix, merge
from veil.detection.consistency import heads_without_faces
from veil.detection.faces import CenterFace, YuNet
from veil.detection.presets import FacePlan, Preset, YoloPlan, get_preset
from veil.detection.types import TARGETS, Detection
from veil.detection.yolo import Yolo
from veil.errors import OptionsError
from veil.models.registry import get_spec

_ENGINES: dict[str, "Engine"] = {}
_LOCK = threading.Lock()


class Engine:
    """Detectors for one preset; models load lazily on first use; ``detect`` is thread-safe."""

    def __init__(self, preset: str = "balanced"):
        self.preset: Preset = get_preset(preset)
        self._models: dict[str, object] = {}
        self._lock = threading.Lock()
        self.last_timings: dict[str, float] = {}

    # -- model access ---------------------------------------------------------------------
    def _model(self, name: str):
        with self._lock:
            m = self._models.get(name)
            if m is None:
                if name == "centerface":
                    m = CenterFace()
                elif name == "yunet":
                    m = YuNet()
                elif name == "plate-yolov8n":
                    m = Yolo(name, "plate")
                elif name == "person-yolo11n-pose":
                    m = Yolo(name, "person", nkpt=17)
                else:  # pragma: no cover - presets only name the models above
                    raise KeyError(name)
                self._models[name] = m
            return m

    def model_names(self, targets: Sequence[str] = TARGETS) -> list[str]:
        """Models (name, source package) that ``detect`` uses for ``targets``."""
        names: list[str] = []
        if "face" in targets:
            names += [p.model for p in self.preset.faces.passes]
        if "person" in targets or ("face" in targets and self.preset.person_heads and "person" in targets):
            names.append(self.preset.persons.model)
        if "plate" in targets:
            names.append(self.preset.plates.model)
        return [f"{n} ({get_spec(n).source})" for n in dict.fromkeys(names)]

    def warm_up(self, targets: Sequence[str] = TARGETS) -> None:
        """Load (and fetch, on first use) every model ``targets`` need."""
        self.detect(np.zeros((64, 64, 3), dtype=np.uint8), targets)

    # -- detection ------------------------------------------------------------------------
    def detect(self, rgb: np.ndarray, targets: Sequence[str] = TARGETS) -> list[Detection]:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError("detect() expects an H x W x 3 uint8 RGB array")
        for t in targets:
            if t not in TARGETS:
                raise OptionsError(f"unknown target {t!r}; choose from {', '.join(TARGETS)}", field="targets")
        timings: dict[str, float] = {}
        out: list[Detection] = []
        faces: list[Detection] = []
        if "face" in targets:
            t0 = time.perf_counter()
            faces = self.detect_faces(rgb, self.preset.faces)
            timings["face"] = time.perf_counter() - t0
            out += faces
        if "person" in targets:
            t0 = time.perf_counter()
            persons = self.detect_yolo(rgb, self.preset.persons)
            timings["person"] = time.perf_counter() - t0
            out += persons
            if "face" in targets and self.preset.person_heads:
                out += heads_without_faces(persons, faces)
        if "plate" in targets:
            t0 = time.perf_counter()
            plates = self.detect_yolo(rgb, self.preset.plates)
            timings["plate"] = time.perf_counter() - t0
            out += plates
        self.last_timings = timings
        return out

    def detect_faces(self, rgb: np.ndarray, plan: FacePlan) -> list[Detection]:
        h, w = rgb.shape[:2]
        cands: list[tuple[int, Detection]] = []
        for i, p in enumerate(plan.passes):
            scale = p.scale
            if scale > 1.0:
                # cap the upscaled pass by pixel budget; skip it when it adds too little
                scale = min(scale, math.sqrt(plan.upscale_budget / (h * w)))
                if scale < 1.3:
                    continue
            model = self._model(p.model)
            cands += [(i, d) for d in model(rgb, p.floor, scale)]
        return _vote(cands, plan.accept, plan.agree)

    def detect_yolo(self, rgb: np.ndarray, plan: YoloPlan) -> list[Detection]:
        model: Yolo = self._model(plan.model)  # type: ignore[assignment]
        h, w = rgb.shape[:2]
        dets: list[Detection] = []
        for size in plan.sizes:
            dets += model.run(rgb, size, plan.threshold)
        if plan.tile_above and h * w > plan.tile_above * 1e6:
            dets += model.tiled(rgb, plan.sizes[0], plan.threshold)
        return merge(dets, iou=0.5, fuse=False)


def _vote(cands: list[tuple[int, Detection]], accept: float, agree: float) -> list[Detection]:
    """Cluster candidates from all passes; keep a cluster when one pass is sure of it or
    when at least two passes see it with enough summed confidence."""
    if not cands:
        return []
    dets = [d for _, d in cands]
    passes = np.array([i for i, _ in cands])
    boxes = np.array([d.box for d in dets], dtype=np.float32)
    scores = np.array([d.score for d in dets], dtype=np.float32)
    ious = iou_matrix(boxes, boxes)
    used = np.zeros(len(dets), dtype=bool)
    out: list[Detection] = []
    for i in np.argsort(-scores):
        if used[i]:
            continue
        members = np.where((ious[i] > 0.3) & ~used)[0]
        used[members] = True
        per_pass: dict[int, float] = {}
        for m in members:
            per_pass[int(passes[m])] = max(per_pass.get(int(passes[m]), 0.0), float(scores[m]))
        best = max(per_pass.values())
        evidence = sum(per_pass.values())
        if best >= accept or (len(per_pass) >= 2 and evidence >= agree):
            d = dets[i]
            d.extra["votes"] = len(per_pass)
            out.append(d)
    return out


def get_engine(preset: str = "balanced") -> Engine:
    """The process-wide engine for ``preset`` (models are shared between presets)."""
    with _LOCK:
        eng = _ENGINES.get(preset)
        if eng is None:
            eng = _ENGINES[preset] = Engine(preset)
        return eng
