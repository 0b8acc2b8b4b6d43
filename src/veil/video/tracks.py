"""From per-frame detections to what is hidden in every frame of a video.

Detections are linked into tracks by ByteTrack (supervision's implementation), one
tracker per kind (faces and heads together, people, plates), restarted at every shot cut.
The whole video's detections are known before anything is masked (the pipeline detects
first and masks in a second pass), so the gaps are filled in both directions:

* fragments of one object that ByteTrack split (the object was missed for a while) are
  joined when the later one starts close to where the earlier one ended;
* frames between two detections of a track get interpolated boxes (seen in frames 10
  and 14: hidden in 11-13);
* a track is extended ``extend`` frames before its first and after its last detection
  (never across a cut), so an object is hidden before a detector is sure of it;
* boxes are smoothed over a few frames (centres averaged, sizes the window's largest)
  so masks do not jitter, and every raw detection stays covered.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from veil.detection.types import Detection

#: Tracked together: a face and the "head" signal of the same person alternate.
_GROUP = {"face": "face", "head": "face", "person": "person", "plate": "plate"}
#: Growth of boxes that no detector saw in that frame (interpolated or extended).
_FILL_GROWTH = 1.1


@dataclass
class Track:
    """One object across frames of one shot: its detections by frame number."""

    group: str
    shot: int
    dets: dict[int, Detection] = field(default_factory=dict)

    @property
    def first(self) -> int:
        return min(self.dets)

    @property
    def last(self) -> int:
        return max(self.dets)


@dataclass
class TrackPlan:
    """What to hide in each frame, and the figures the report gives."""

    frames: list[list[Detection]]
    tracks: dict[str, int]  #: tracks per target group
    detections: int  #: raw detections over all frames
    filled_frames: int  #: frames where tracking hid something no detector found in that frame
    lost: list[dict]  #: tracks that ended before their shot did, with the frames left unhidden


def _box(d: Detection) -> np.ndarray:
    return np.asarray(d.box, dtype=np.float64)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _near(a: np.ndarray, b: np.ndarray, frames_apart: int) -> bool:
    """Could ``b`` be ``a`` again ``frames_apart`` frames later? Overlapping, or its centre
    within a box size (more for longer gaps) and of a similar size."""
    if _iou(a, b) > 0.1:
        return True
    size = max(a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1], 1.0)
    ca, cb = (a[:2] + a[2:]) / 2, (b[:2] + b[2:]) / 2
    ratio = ((b[2] - b[0]) * (b[3] - b[1]) + 1) / ((a[2] - a[0]) * (a[3] - a[1]) + 1)
    return float(np.hypot(*(ca - cb))) <= size * min(2.0, 0.75 + 0.05 * frames_apart) and 0.4 <= ratio <= 2.5


def link(frames: Sequence[Sequence[Detection] | None], shots: Sequence[int], fps: float) -> list[Track]:
    """Tracks from the detections of every frame (``None``: detection did not run there)."""
    # a header's rate may be anything (1000000/1, 1/1000): bounded, and ByteTrack keeps a lost
    # track frame_rate / 30 * buffer frames, so the buffer gives it at least 5 at any rate
    fps = min(max(fps, 1.0), 240.0)
    # imported here, not with the module: supervision pulls in SciPy and its annotators
    # (~0.4 s), which every photo command would otherwise pay at start-up through the CLI
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import supervision as sv
        from supervision.tracker.byte_tracker.core import ByteTrack

    tracks: list[Track] = []
    for group in ("face", "person", "plate"):
        tracker = None
        live: dict[int, Track] = {}
        shot_now = -1
        for i, dets in enumerate(frames):
            if shots[i] != shot_now:
                shot_now, live = shots[i], {}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    tracker = ByteTrack(track_activation_threshold=0.0, lost_track_buffer=max(5, int(fps), math.ceil(150 / fps)),
                                        minimum_matching_threshold=0.8, frame_rate=max(1, int(round(fps))),
                                        minimum_consecutive_frames=1)  # fmt: skip
            if dets is None:
                continue
            mine = [d for d in dets if _GROUP.get(d.target) == group]
            if not mine:
                tracker.update_with_detections(sv.Detections.empty())
                continue
            xyxy = np.array([d.box for d in mine], dtype=np.float64)
            out = tracker.update_with_detections(
                sv.Detections(xyxy=xyxy, confidence=np.array([d.score for d in mine], dtype=np.float64),
                              class_id=np.zeros(len(mine), dtype=int)))  # fmt: skip
            taken: set[int] = set()
            for box, tid in zip(out.xyxy, out.tracker_id if out.tracker_id is not None else [], strict=False):
                j = _same_box(xyxy, box, taken)
                if j is None:
                    continue
                taken.add(j)
                if int(tid) not in live:  # a new track (ids are never reused within a shot)
                    live[int(tid)] = Track(group, shot_now)
                    tracks.append(live[int(tid)])
                live[int(tid)].dets[i] = mine[j]
            for j, d in enumerate(mine):  # detections ByteTrack did not report: tracks of their own
                if j not in taken:
                    tracks.append(Track(group, shot_now, {i: d}))
    return _join_fragments(tracks, max_gap=max(5, int(fps)))


def _same_box(xyxy: np.ndarray, box: np.ndarray, taken: set[int]) -> int | None:
    diff = np.abs(xyxy - box).sum(axis=1)
    for j in np.argsort(diff):
        if int(j) not in taken and diff[j] < 1e-3:
            return int(j)
    return None


def _join_fragments(tracks: list[Track], max_gap: int) -> list[Track]:
    """Join a track to an earlier one of the same kind and shot that ended shortly before
    it started, where the earlier one was (or was heading): the same object, missed for a
    few frames, or moving too fast for the tracker's overlap test."""
    tracks = sorted(tracks, key=lambda t: (t.group, t.shot, t.first))
    out: list[Track] = []
    for t in tracks:
        best, best_gap = None, None
        start = _box(t.dets[t.first])
        for o in out:
            if o.group != t.group or o.shot != t.shot or o.last >= t.first:
                continue
            gap = t.first - o.last
            if gap > max_gap or (best_gap is not None and gap >= best_gap):
                continue
            end = _box(o.dets[o.last])
            recent = sorted(o.dets)[-3:]
            v = (end - _box(o.dets[recent[0]])) / max(1, o.last - recent[0])
            if _near(end, start, gap) or _near(end + v * gap, start, gap):
                best, best_gap = o, gap
        if best is not None:
            best.dets.update(t.dets)
        else:
            out.append(t)
    return out


def _grow(box: np.ndarray, factor: float) -> np.ndarray:
    c, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * factor
    return np.concatenate([c - half, c + half])


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])])


def _smoothed(track: Track, radius: int) -> dict[int, np.ndarray]:
    """Per detected frame: the centre averaged over ``radius`` detections either side and
    the largest size among them, joined with the raw box so nothing found is uncovered."""
    idx = sorted(track.dets)
    boxes = np.array([_box(track.dets[i]) for i in idx])
    centres, halves = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) / 2
    out: dict[int, np.ndarray] = {}
    for k, i in enumerate(idx):
        lo, hi = max(0, k - radius), min(len(idx), k + radius + 1)
        c, h = centres[lo:hi].mean(axis=0), halves[lo:hi].max(axis=0)
        out[i] = _union(np.concatenate([c - h, c + h]), boxes[k])
    return out


def _at_edge(box: np.ndarray, size: tuple[int, int] | None) -> bool:
    """Does ``box`` touch the frame's border (within a quarter of its own size)? A face
    cut by the border is one the detectors lose while it is still half in view."""
    if size is None:
        return False
    m = 0.25 * max(box[2] - box[0], box[3] - box[1])
    return bool(box[0] <= m or box[1] <= m or box[2] >= size[0] - m or box[3] >= size[1] - m)


def _inside(box: np.ndarray, size: tuple[int, int]) -> bool:
    return bool(box[2] > 0 and box[3] > 0 and box[0] < size[0] and box[1] < size[1] and box[2] > box[0] and box[3] > box[1])


def _reach(sm: np.ndarray, v: np.ndarray, step: int, limit: int, extend: int, edge: int, size: tuple[int, int] | None) -> int:
    """Frames to extend a track from its end box ``sm`` moving ``v`` a frame (``step`` -1:
    backwards): ``extend``, or where the box touches the border, until its motion carries
    it out of the frame, at most ``edge`` frames; never past ``limit`` frames (the cut)."""
    n = min(extend, limit)
    if size is None or not _at_edge(sm, size):
        return n
    while n < min(edge, limit) and _inside(sm + v * step * (n + 1), size):
        n += 1
    return n


def plan(frames: Sequence[Sequence[Detection] | None], shots: Sequence[int], fps: float, *,
         extend: int = 5, smooth: int = 2, size: tuple[int, int] | None = None) -> TrackPlan:  # fmt: skip
    """What to hide in each frame: the raw detections and every track's boxes (filled,
    extended and smoothed). ``frames[i]`` is None where detection did not run. ``size``
    (the frame's width and height) lets a track that starts or ends at the border be
    extended until its motion carries it out of the frame (at most a second), not just
    ``extend`` frames: faces cut by the border are the ones detectors lose."""
    n = len(frames)
    tracks = link(frames, shots, fps)
    shot_start: dict[int, int] = {}
    shot_end: dict[int, int] = {}
    for i, s in enumerate(shots):
        shot_start.setdefault(s, i)
        shot_end[s] = i
    hide: list[list[Detection]] = [[] for _ in range(n)]
    filled = np.zeros(n, dtype=bool)
    counts: dict[str, int] = {}
    lost: list[dict] = []
    for tid, t in enumerate(tracks, start=1):
        counts[t.group] = counts.get(t.group, 0) + 1
        sm = _smoothed(t, smooth)
        idx = sorted(sm)
        target_of = {i: t.dets[i].target for i in idx}
        for k, i in enumerate(idx):  # detected frames, and the gaps up to the next detection
            d = t.dets[i]
            hide[i].append(Detection(d.target, d.score, tuple(sm[i]), d.landmarks, d.keypoints, d.polygon,
                                     d.source, {**d.extra, "track_id": tid}))  # fmt: skip
            if k + 1 < len(idx):
                j = idx[k + 1]
                for f in range(i + 1, j):
                    w = (f - i) / (j - i)
                    box = _grow(sm[i] * (1 - w) + sm[j] * w, _FILL_GROWTH)
                    hide[f].append(_filler(target_of[i if w < 0.5 else j], t.dets[i].score, box, tid))
                    filled[f] |= not _has_raw(frames[f], t.group)
        first, last = idx[0], idx[-1]
        raw = {i: _box(d) for i, d in t.dets.items()}  # the motion of the raw boxes: smoothing skews the ends
        v0 = _velocity(raw, idx[:3])
        v1 = _velocity(raw, idx[-3:])
        edge = max(extend, int(round(fps)))
        before = _reach(sm[first], v0, -1, first - shot_start[t.shot], extend, edge, size)
        for f in range(first - before, first):
            box = _union(_grow(sm[first], _FILL_GROWTH), sm[first] + v0 * (f - first))
            hide[f].append(_filler(target_of[first], t.dets[first].score, box, tid))
            filled[f] |= not _has_raw(frames[f], t.group)
        end = last + _reach(sm[last], v1, 1, shot_end[t.shot] - last, extend, edge, size)
        for f in range(last + 1, end + 1):
            box = _union(_grow(sm[last], _FILL_GROWTH), sm[last] + v1 * (f - last))
            hide[f].append(_filler(target_of[last], t.dets[last].score, box, tid))
            filled[f] |= not _has_raw(frames[f], t.group)
        if end < shot_end[t.shot]:
            lost.append({"track_id": tid, "target": t.group, "last_seen": last, "hidden_until": end, "shot_end": shot_end[t.shot]})
    raw = sum(len(d) for d in frames if d)
    return TrackPlan(hide, counts, raw, int(filled.sum()), lost)


def _velocity(sm: dict[int, np.ndarray], idx: list[int]) -> np.ndarray:
    if len(idx) < 2:
        return np.zeros(4)
    return (sm[idx[-1]] - sm[idx[0]]) / max(1, idx[-1] - idx[0])


def _has_raw(dets: Sequence[Detection] | None, group: str) -> bool:
    return bool(dets) and any(_GROUP.get(d.target) == group for d in dets)


def _filler(target: str, score: float, box: np.ndarray, track_id: int) -> Detection:
    return Detection(target, float(score), tuple(float(v) for v in box), source="track", extra={"track_id": track_id})
