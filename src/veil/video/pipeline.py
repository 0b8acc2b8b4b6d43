"""Anonymize a video: detect in every frame, link into tracks, then mask and encode.

Two passes over the input, each streaming frame by frame: the first decodes and detects
(only boxes are kept, a few bytes a frame), the tracks are then planned over the whole
video, and the second decodes again, masks every frame with the photo masking
(:func:`veil.masking.mask_detections`, the same options) and encodes it with its own
timestamp while audio packets are copied as they are. Memory therefore does not grow
with the video's length, and a track can be filled backwards as well as forwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

from veil.detection.types import Detection
from veil.errors import VeilError, VideoError
from veil.imageio import atomic_file
from veil.imageio.nature import changed_pixels
from veil.inference.memory import release_freed_memory
from veil.masking import footprints, mask_detections
from veil.pipeline.core import wanted_detections
from veil.pipeline.options import Options
from veil.video.container import (
    CONTENT_TYPES,
    EXTENSIONS,
    MAX_FRAME_PIXELS,
    VideoInfo,
    VideoWriter,
    YuvPicture,
    check_complete,
    iter_frames,
    open_input,
    upright,
    video_stream,
)
from veil.video.cuts import CutDetector
from veil.video.tracks import TrackPlan, plan

Progress = Callable[[str, int, int], None]
#: Frames between two returns of freed memory to the system: a video's detection buffers
#: have the same sizes frame after frame, so the heap reuses them and trimming after every
#: frame (as for photos) would only cost time (~2 ms a frame).
TRIM_EVERY = 250


@dataclass(frozen=True)
class Schedule:
    """Which detectors run on which frames of a video."""

    #: the preset's detectors run on every ``every``-th frame and on the first of each shot
    every: int = 1
    #: the detectors of this (lighter) preset run on the frames between, if any ...
    between: str | None = None
    #: ... for these targets only (the others are covered by their tracks there)
    between_targets: tuple[str, ...] = ("face",)
    #: ... on every ``between_every``-th frame of the shot (the rest: tracks cover them)
    between_every: int = 1

    def pass_for(self, in_shot: int) -> str | None:
        """Which detectors run on the frame ``in_shot`` frames into its shot: "full",
        "between", or None (its tracks cover it). Counted from each shot's first frame, so
        every shot starts with the full detectors and has them every ``every`` frames."""
        if self.every == 1 or in_shot % self.every == 0:
            return "full"
        return "between" if self.between and in_shot % self.between_every == 0 else None

    def describe(self, preset: str) -> str | None:
        if self.every == 1:
            return None
        nth = f"{self.every}{'nd' if self.every == 2 else 'rd' if self.every == 3 else 'th'}"
        rest = (f"{self.between}'s {'/'.join(self.between_targets)} detectors on the frames between"
                if self.between else "tracks cover the frames between")  # fmt: skip
        return f"{preset}: its detectors on every {nth} frame and the first of each shot, {rest}"


#: Which detectors run on which frames, per preset (``thorough``: all of them on every frame).
#: Counted from each shot's first frame (every shot starts with the full detectors).
#: ``fast`` detects on every 2nd frame and lets the tracks cover the frames between.
#: ``balanced`` runs its full plans (YOLO11m faces...) on every 3rd frame and CenterFace
#: (``fast``'s face plan) on every frame between: on the labelled Ken-Burns clip this finds
#: more than YOLO11m on every frame (which misses some faces for many frames in a row,
#: where CenterFace sees them) at under half the cost (bench/video.py). Every object a
#: full pass finds is hidden from ``every - 1`` frames before (the track's extension).
#: Every 3rd rather than 4th since the face model's activations run in int8 (its plan ~95 ms
#: a 720p frame, CenterFace's ~23 with its session's arena): replayed, seed 5 99.90% /
#: 0.40% of frames with a face visible / longest run 2 (every 4th: 99.88% / 0.50% / 3),
#: seed 11 98.58% / 3.13% / 38 (98.38% / 3.33% / 31); every 2nd: 99.95% / 0.20% / 2 and 98.80% / 3.33% / 43 at ~15%
#: more time per frame, which the speed target does not allow.
#: Measured from cached detections (``python bench/video_replay.py --photos 20 --seed 5``
#: and ``--photos 30 --seed 11``): the full detectors also on each shot's last frame made
#: seed 5 worse (CenterFace found faces there YOLO11m did not), and CenterFace on every
#: 2nd frame between (``between_every=2``, a third of its cost) helped seed 11 (2.8%
#: against 3.3% of frames with a face visible) but not seed 5 (0.5% against 0.4%): neither kept.
SCHEDULES: dict[str, Schedule] = {"fast": Schedule(every=2), "balanced": Schedule(every=3, between="fast")}


def schedule_passes(sched: Schedule, shots: Sequence[int]) -> list[str | None]:
    """:meth:`Schedule.pass_for` of every frame of a video whose frames are in ``shots``."""
    out: list[str | None] = []
    start = 0
    for i, s in enumerate(shots):
        if i and s != shots[i - 1]:
            start = i
        out.append(sched.pass_for(i - start))
    return out


class Cancelled(VeilError):
    """The caller asked the video job to stop (``should_stop`` returned True)."""


@dataclass
class VideoReport:
    """What happened to one video. Never holds pixels or metadata values."""

    info: VideoInfo
    preset: str
    frames: int = 0
    detected_frames: int = 0
    shots: int = 1
    detections: dict[str, int] = field(default_factory=dict)
    tracks: dict[str, int] = field(default_factory=dict)
    frames_filled: int = 0
    lost: list[dict] = field(default_factory=list)
    hidden: dict[str, int] = field(default_factory=dict)
    audio: str = "none"
    metadata_removed: list[str] = field(default_factory=list)
    metadata_kept: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)

    @property
    def container_out(self) -> str:
        return self.info.output_container

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.container_out]

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.container_out]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "video", "input": self.info.to_json(), "format_out": self.container_out, "preset": self.preset,
            "frames": self.frames, "detected_frames": self.detected_frames, "shots": self.shots,
            "detections": dict(self.detections), "tracks": dict(self.tracks), "frames_filled": self.frames_filled,
            "lost": list(self.lost), "hidden": dict(self.hidden), "audio": self.audio,
            "metadata_removed": list(self.metadata_removed), "metadata_kept": list(self.metadata_kept),
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()}, "notes": list(self.notes),
            "models": list(self.models),
        }  # fmt: skip


def track_extension(options: Options) -> int:
    """Frames a track is extended: the option, but at least the frames between two runs of
    the preset's detectors, so an object they find is hidden since it could first be seen."""
    return max(options.track_extend, SCHEDULES.get(options.preset, Schedule()).every - 1)


def plan_tracks(frames: Sequence[Sequence[Detection] | None], shots: Sequence[int], info: VideoInfo,
                options: Options) -> TrackPlan:  # fmt: skip
    """The tracks of a detected video (:func:`veil.video.tracks.plan` with the options' extension)."""
    return plan(frames, shots, info.fps, extend=track_extension(options), size=(info.width, info.height))


def _rewind(src: str | BinaryIO) -> str | BinaryIO:
    if not isinstance(src, str):
        src.seek(0)
    return src


def detect_video(src: str | BinaryIO, options: Options, *, engine: Any = None, progress: Progress | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 ) -> tuple[VideoInfo, list[list[Detection] | None], list[int], list[float]]:  # fmt: skip
    """Pass 1: the wanted detections of every frame (None where detection was skipped),
    the shot number and the presentation time (seconds) of every frame."""
    if engine is None:
        from veil.detection.engine import get_engine

        engine = get_engine(options.preset)
    container, info = open_input(_rewind(src))
    sched = SCHEDULES.get(options.preset, Schedule())
    light = None
    if sched.between:
        from veil.detection.engine import get_engine

        light = get_engine(sched.between)
    light_targets = tuple(t for t in options.targets if t in sched.between_targets)
    cuts = CutDetector()
    frames: list[list[Detection] | None] = []
    shots: list[int] = []
    times: list[float] = []
    shot = 0
    start = 0  # first frame of the current shot
    try:
        for i, frame in enumerate(iter_frames(container)):
            if i == 0:
                info.set_rotation(frame.rotation)
                stored = (frame.width, frame.height)
                if frame.width * frame.height > MAX_FRAME_PIXELS:
                    raise VideoError(f"frames of {frame.width}x{frame.height} exceed veil's limit of "
                                     f"{MAX_FRAME_PIXELS // 1_000_000} MP per frame")  # fmt: skip
            rgb = upright(frame, info.rotation, stored)
            if cuts.is_cut(rgb):
                shot, start = shot + 1, i
            shots.append(shot)
            times.append(float(frame.time) if frame.time is not None else i / (info.fps or 25.0))
            kind = sched.pass_for(i - start)
            if kind == "full":
                frames.append(wanted_detections(engine.detect(rgb, targets=options.targets, trim=False), options))
            elif kind == "between" and light is not None and light_targets:
                frames.append(wanted_detections(light.detect(rgb, targets=light_targets, trim=False), options))
            else:
                frames.append(None)
            if i % TRIM_EVERY == TRIM_EVERY - 1:
                release_freed_memory()
            if progress is not None:
                progress("detect", i + 1, max(info.frames, i + 1))
            if should_stop is not None and should_stop():
                raise Cancelled("cancelled")
    finally:
        container.close()
    if not frames:
        raise VideoError("the video has no frames that can be decoded")
    check_complete(info, len(frames), times[0], times[-1])
    return info, frames, shots, times


def anonymize_video(src: str | Path | BinaryIO, dst: str | Path | BinaryIO | None, options: Options, *,
                    engine: Any = None, progress: Progress | None = None,
                    should_stop: Callable[[], bool] | None = None) -> VideoReport:  # fmt: skip
    """Hide what ``options`` asks for in every frame of ``src``, writing ``dst``.

    ``src`` and ``dst`` are paths or seekable binary files (``src`` is read twice). A
    path ``dst`` is written atomically (never half-written); ``dst=None`` is a dry run
    (detection and tracking only). Raises :class:`VideoError` for unusable input.
    """
    src = str(src) if isinstance(src, Path) else src
    if engine is None:
        from veil.detection.engine import get_engine

        engine = get_engine(options.preset)
    t0 = time.perf_counter()
    info, frames, shots, _times = detect_video(src, options, engine=engine, progress=progress, should_stop=should_stop)
    t_detect = time.perf_counter()
    tp = plan_tracks(frames, shots, info, options)
    rep = VideoReport(info=info, preset=options.preset, frames=len(frames), shots=shots[-1] + 1,
                      detected_frames=sum(1 for f in frames if f is not None))  # fmt: skip
    for dets in frames:
        for d in dets or ():
            rep.detections[d.target] = rep.detections.get(d.target, 0) + 1
    rep.tracks, rep.frames_filled, rep.lost = tp.tracks, tp.filled_frames, tp.lost
    if hasattr(engine, "model_names"):
        rep.models = list(engine.model_names(tuple(options.targets)))
    rep.metadata_removed = list(info.metadata) + [f"{s} stream" for s in info.dropped_streams]
    if info.rotation:
        rep.notes.append(f"turned upright: frames rotated {info.rotation} degrees, rotation tag removed")
    note = SCHEDULES.get(options.preset, Schedule()).describe(options.preset)
    if note:
        rep.notes.append(note)
    rep.timings_ms["detect"] = (t_detect - t0) * 1000
    if dst is not None:
        if isinstance(dst, (str, Path)):
            with atomic_file(dst) as fh:
                _encode(src, fh, options, tp, rep, progress, should_stop)
        else:
            _encode(src, dst, options, tp, rep, progress, should_stop)
        rep.timings_ms["mask_encode"] = (time.perf_counter() - t_detect) * 1000
    else:
        for dets in tp.frames:
            for d in dets:
                rep.hidden[d.target] = rep.hidden.get(d.target, 0) + 1
    return rep


def _encode(src: str | BinaryIO, dst: BinaryIO, options: Options, tp: TrackPlan, rep: VideoReport,
            progress: Progress | None, should_stop: Callable[[], bool] | None) -> None:  # fmt: skip
    """Pass 2: decode again, mask each frame with its planned regions, encode, copy audio."""
    container, info = open_input(_rewind(src))
    info.set_rotation(rep.info.rotation)
    try:
        writer = VideoWriter(dst, container, rep.info, codec=options.video_codec, crf=options.video_quality,
                             audio=options.audio, keep=options.keep_metadata)  # fmt: skip
    except BaseException:  # the writer closed its output; the input is closed here
        container.close()
        raise
    rep.notes += writer.notes
    rep.audio = ("copied" if writer.audio_map else "re-encoded" if writer.audio_encoders else "none") if info.audio else "none"
    if info.audio and options.audio == "drop":
        rep.audio = "dropped"
    rep.metadata_kept = [k for k in options.keep_metadata if k in ("copyright", "artist", "datetime")]
    n = len(tp.frames)
    i = 0
    w, h = rep.info.width, rep.info.height
    stored = (h, w) if rep.info.rotation in (90, 270) else (w, h)
    # frames masked in place as decoded (only the masked crops through RGB) where nothing
    # turns them and the output keeps their 4:2:0 layout and colour description
    yuv = not rep.info.rotation and writer.video.pix_fmt == "yuv420p"
    colour = (writer.colorspace, writer.color_range)
    ok = False
    try:
        video = video_stream(container)  # never an attached picture (cover art)
        video.thread_type = "AUTO"
        streams = [video, *(container.streams.audio if options.audio == "keep" else ())]
        for packet in container.demux(*streams):
            if packet.stream.type == "audio":
                writer.copy_audio(packet)
                continue
            for frame in packet.decode():
                if i >= n:
                    raise VideoError("the video decoded differently the second time (more frames)")
                pic = YuvPicture.of(frame, stored, colour) if yuv else None
                if pic is not None:  # only the masked crops go through RGB
                    h, w = pic.height, pic.width
                    dets = [d.clipped(w, h) for d in tp.frames[i]]
                    masked = []
                    for rect, group in footprints(dets, options, w, h, align=2):
                        x0, y0 = rect[:2]
                        crop = pic.rgb(rect)
                        out, done = mask_detections(crop, [d.scaled(1, 1, -x0, -y0) for d in group], options,
                                                    stage="track")  # fmt: skip
                        pic.paste(rect, out, changed_pixels(out, crop))
                        masked += done
                    writer.write_frame(pic.frame(), frame.pts)
                else:
                    rgb = upright(frame, rep.info.rotation, stored)
                    h, w = rgb.shape[:2]
                    dets = [d.clipped(w, h) for d in tp.frames[i]]
                    out, masked = mask_detections(rgb, dets, options, stage="track") if dets else (rgb, [])
                    writer.write(out, frame.pts)
                for m in masked:
                    rep.hidden[m.target] = rep.hidden.get(m.target, 0) + 1
                i += 1
                if progress is not None:
                    progress("encode", i, n)
                if should_stop is not None and should_stop():
                    raise Cancelled("cancelled")
        if i != n:
            raise VideoError(f"the video decoded differently the second time ({i} of {n} frames)")
        writer.close()
        ok = True
    except VeilError:
        raise
    except Exception as exc:  # FFmpeg errors while encoding: name them, never half a file
        raise VideoError(f"cannot encode the video ({type(exc).__name__}: {exc})") from None
    finally:
        if not ok:
            writer.abort()
        container.close()
