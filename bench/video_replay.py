"""Video misses, replayed: where and why veil's video schedule leaves a labelled face visible.

Usage:
    python bench/video_replay.py [--photos 20] [--seconds 2] [--seed 5] [--preset balanced]
        [--list 40] [--every N] [--between-every N] [--union]

Builds bench/video.py's labelled Ken-Burns clip (same ``--photos``/``--seconds``/``--seed``),
runs the detectors the schedule asks for on each frame (cached under ~/.cache/veil-bench,
keyed by the clip's arguments; a changed schedule only adds the frames it lacks), then replays the
video schedule (:data:`veil.video.pipeline.SCHEDULES`, which frames get which detections)
and the track planning (:func:`veil.video.tracks.plan`) from the cached boxes, and scores
the planned boxes as the output's fill would cover them (box shape, the face margin): a
face is visible when less than half its label box is covered. Prints the same three
accuracy columns as bench/video.py (geometry instead of pixels, so close to but not
exactly its figures), and lists the misses: frame, face, size, place in the shot, the
schedule's pass on that frame, and how many frames away the nearest detection of that
face is. Re-running after a change to tracks.py or the schedule costs seconds, not a
detection run.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from video import H, W, ken_burns  # noqa: E402

from veil.detection.types import Detection  # noqa: E402
from veil.pipeline.options import Options  # noqa: E402
from veil.video.container import upright  # noqa: E402
from veil.video.cuts import CutDetector  # noqa: E402


def shots_of(clip: Path) -> list[int]:
    """The shot of every frame, as the pipeline's cut detector finds them."""
    cuts, shots, shot = CutDetector(), [], 0
    with av.open(str(clip)) as c:
        for fr in c.decode(video=0):
            shot += cuts.is_cut(upright(fr, 0))
            shots.append(shot)
    return shots


def detect_missing(clip: Path, preset: str, between: str | None, wanted: list[str | None], full: dict, lite: dict,
                   union: bool = False) -> bool:  # fmt: skip
    """Run the detectors the schedule ``wanted`` on frames not yet in the caches ``full``/``lite``
    (``union``: the lighter detectors on the full frames too)."""
    need = [i for i, p in enumerate(wanted)
            if (p == "full" and (i not in full or (union and between and i not in lite))) or (p == "between" and i not in lite)]  # fmt: skip
    if not need:
        return False
    from veil.detection.engine import get_engine

    heavy = get_engine(preset)
    light = get_engine(between) if between else None
    todo = set(need)
    print(f"  detecting on {len(need)} frames", file=sys.stderr, flush=True)
    with av.open(str(clip)) as c:
        for i, fr in enumerate(c.decode(video=0)):
            if i not in todo:
                continue
            rgb = upright(fr, 0)  # as the pipeline converts frames: detections depend on it
            if wanted[i] == "full" and i not in full:
                full[i] = heavy.detect(rgb, targets=("face",))
            if (wanted[i] == "between" or union) and i not in lite:
                lite[i] = light.detect(rgb, targets=("face",)) if light else []
    return True


def covered(dets: list[Detection], labels: list[tuple[str, list[float]]], margin: float) -> list[bool]:
    """Per label: is at least half of its box under the fill of ``dets`` (box shape)?"""
    if not labels:
        return []
    m = _fill(dets, margin)
    out = []
    for _key, (x1, y1, x2, y2) in labels:
        patch = m[int(y1) : max(int(y1) + 1, int(y2)), int(x1) : max(int(x1) + 1, int(x2))]
        out.append(bool(patch.mean() >= 0.5))
    return out


def _fill(dets: list[Detection], margin: float) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    for d in dets:
        x1, y1, x2, y2 = d.box
        k = margin if d.target in ("face", "head") else 1.1
        cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * k / 2, (y2 - y1) * k / 2
        m[max(0, int(cy - hh)) : max(0, int(np.ceil(cy + hh))), max(0, int(cx - hw)) : max(0, int(np.ceil(cx + hw)))] = True
    return m


def _filled_share(dets: list[Detection], margin: float) -> float:
    return float(_fill(dets, margin).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "eval")
    ap.add_argument("--photos", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--preset", default="balanced")
    ap.add_argument("--list", type=int, default=40, help="misses to list")
    ap.add_argument("--every", type=int, default=0, help="try the full detectors on every N-th frame instead of the schedule's")
    ap.add_argument("--union", action="store_true", help="try the lighter detectors on the full frames too (their union)")
    ap.add_argument("--between-every", type=int, default=0, help="try the lighter detectors on every N-th frame between")
    args = ap.parse_args()
    from dataclasses import replace

    from veil.models.store import default_store
    from veil.video import pipeline as vp
    from veil.video.tracks import plan

    sched = vp.SCHEDULES.get(args.preset, vp.Schedule())
    if args.every:
        sched = replace(sched, every=args.every)
    if args.between_every:
        sched = replace(sched, between_every=args.between_every)
    print(f"schedule: {sched}", file=sys.stderr)
    # cached detections are only valid for the models that made them (and for frames
    # converted to RGB as the pipeline does: "rgb2")
    models = "-".join(default_store().meta(m).get("onnx_sha256", "")[:8] for m in ("face-yolo11m", "centerface"))
    cache = Path.home() / ".cache" / "veil-bench" / f"video-{args.preset}-p{args.photos}-s{args.seconds}-seed{args.seed}-{models}-rgb2.pkl"
    clip = cache.with_suffix(".mp4")
    if cache.exists():
        labels, full, lite, shots = pickle.loads(cache.read_bytes())
    else:
        cache.parent.mkdir(parents=True, exist_ok=True)
        labels = ken_burns(args.eval_dir, args.photos, args.seconds, clip, seed=args.seed)
        full, lite, shots = {}, {}, shots_of(clip)
    options = Options(targets=("face",), preset=args.preset)
    passes = vp.schedule_passes(sched, shots)
    if detect_missing(clip, args.preset, sched.between, passes, full, lite, args.union):
        cache.write_bytes(pickle.dumps((labels, full, lite, shots)))
    frames = [(full[i] + (lite[i] if args.union and sched.between else [])) if p == "full" else lite[i] if p == "between" else None
              for i, p in enumerate(passes)]  # fmt: skip
    tp = plan(frames, shots, 25.0, extend=vp.track_extension(options), size=(W, H))
    hidden = [covered(tp.frames[i], labels[i], options.margin) for i in range(len(labels))]
    area = np.mean([_filled_share(tp.frames[i], options.margin) for i in range(0, len(labels), 5)])
    faces = sum(len(r) for r in labels)
    found = sum(sum(r) for r in hidden)
    bad = sum(1 for r in hidden if not all(r))
    longest, run = 0, {}
    misses = []
    for i, (row, hid) in enumerate(zip(labels, hidden, strict=True)):
        run = {key: run.get(key, 0) + 1 for (key, _b), h in zip(row, hid, strict=True) if not h}
        longest = max([longest, *run.values()])
        for (key, box), h in zip(row, hid, strict=True):
            if not h:
                misses.append((i, key, box))
    print(f"{args.preset} seed {args.seed} photos {args.photos}: {len(labels)} frames, {faces} faces; "
          f"recall {found / faces:.2%}, frames visible {bad / len(labels):.2%}, longest run {longest}, "
          f"misses {faces - found}, frame area filled {area:.2%}")  # fmt: skip
    starts = {s: shots.index(s) for s in set(shots)}
    ends = {s: len(shots) - 1 - shots[::-1].index(s) for s in set(shots)}

    def seen(f: int, box: list[float], dets_of) -> bool:
        return any(covered([d], [("", box)], options.margin)[0] for d in dets_of(f) or ())

    print("| frame | face | px high | in shot | pass | any det covers it | nearest full det | nearest between det | "
          "planned det (dist) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for i, key, box in misses[: args.list]:
        s = shots[i]
        pos = f"{i - starts[s]}/{ends[s] - starts[s]}"

        def nearest(dets_of, i=i, box=box) -> str:
            for k in range(0, 30):
                for f in {i - k, i + k}:
                    if 0 <= f < len(labels) and shots[f] == s and seen(f, box, dets_of):
                        return f"{f - i:+d}"
            return "-"

        any_det = "full" if seen(i, box, lambda f: full.get(f)) else "between" if seen(i, box, lambda f: lite.get(f)) else "no"
        near = [d for d in tp.frames[i] if d.target in ("face", "head")]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        dist = min((np.hypot((d.box[0] + d.box[2]) / 2 - cx, (d.box[1] + d.box[3]) / 2 - cy) for d in near), default=-1)
        edge = min(box[0], box[1], W - box[2], H - box[3])
        print(f"| {i} | {key} | {box[3] - box[1]:.0f} px, {edge:.0f} from edge | {pos} | {passes[i]} | {any_det} | "
              f"{nearest(lambda f: full.get(f))} | {nearest(lambda f: lite.get(f))} | {dist:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
