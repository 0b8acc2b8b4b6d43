"""Streaming video I/O on PyAV: frames in, frames out, audio copied packet for packet.

Nothing here holds more than a few frames: :func:`open_input` probes a file,
:func:`iter_frames` decodes it frame by frame (turned upright), and :class:`VideoWriter`
encodes masked frames with the input's own timestamps while audio packets are muxed
unchanged. Subtitle, data and attachment streams, chapters and container metadata are
never copied; only the safe fields the options name are written back.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, BinaryIO, Iterator

import av
import av.error
import cv2
import numpy as np

from veil.errors import VideoError
from veil.imageio.formats import VIDEO_BY_NAME, VIDEO_LABELS
from veil.video.sniff import SNIFF_BYTES, sniff_container

#: Output container per input family: the input's own where it can hold H.264, else MP4.
_OUTPUT = {"mp4": "mp4", "mov": "mov", "matroska": "matroska", "mpegts": "mpegts", "avi": "mp4", "flv": "mp4", "webm": "mp4"}
EXTENSIONS = {n: VIDEO_BY_NAME[n].extension for n in sorted(set(_OUTPUT.values()))}
CONTENT_TYPES = {n: VIDEO_BY_NAME[n].mime_type for n in EXTENSIONS}
_ENCODERS = {"h264": "libx264", "hevc": "libx265"}
#: Sample rates FFmpeg's AAC encoder takes (the MPEG-4 table); others are resampled.
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
#: Audio codecs each output container takes as they are; others are re-encoded to AAC.
#: Vorbis is never copied: its comment header (vendor, GPS, titles) is part of the codec
#: data that a copy would carry over.
_AUDIO_COPY = {
    "mp4": {"aac", "mp3", "opus", "flac", "ac3", "eac3", "alac"},
    "mov": {"aac", "mp3", "alac", "pcm_s16le", "pcm_s16be", "pcm_s24le", "ac3", "eac3"},
    "matroska": {"aac", "mp3", "opus", "flac", "ac3", "eac3", "pcm_s16le", "alac", "dts"},
    "mpegts": {"aac", "mp3", "ac3", "eac3", "opus"},
}
#: Largest frame veil decodes (8K UHD is 33 MP): a frame and its masked copy must fit in
#: memory many times over, so a header claiming more is refused before any decoding.
MAX_FRAME_PIXELS = 40_000_000
#: Tags that only describe the file's structure (left out of the report's "removed" list).
_STRUCTURAL = {"major_brand", "minor_version", "compatible_brands", "handler_name", "language", "vendor_id",
               "duration", "_statistics_tags", "_statistics_writing_app", "number_of_frames", "number_of_bytes", "bps"}  # fmt: skip
#: Safe ``--keep-metadata`` fields and the container tags they keep.
_KEEPABLE_TAGS = {"copyright": ("copyright",), "artist": ("artist", "author"), "datetime": ("creation_time", "date")}


@dataclass
class VideoInfo:
    """What the report and the writer need to know about an input video."""

    container: str  #: sniffed family: mp4, mov, matroska, webm, avi, mpegts, flv
    width: int  #: upright width (after the display rotation)
    height: int
    #: counter-clockwise degrees applied to turn the frames upright (0, 90, 180, 270): the
    #: display matrix of the first frame (see :meth:`set_rotation`)
    rotation: int
    frames: int  #: declared or estimated frame count (0 when unknown): for progress
    fps: float  #: average frame rate
    duration_s: float
    codec: str
    bit_rate: int
    audio: list[str] = field(default_factory=list)  #: codec of each audio stream
    dropped_streams: list[str] = field(default_factory=list)  #: subtitle/data/attachment streams
    metadata: list[str] = field(default_factory=list)  #: container/stream tags found (names only)
    #: the video's duration the header declares, where it is binding (0: none): the truncation check
    declared_s: float = 0.0
    #: frames an MP4/MOV sample index counts (0 elsewhere: an AVI's count holds placeholder
    #: ticks, an MKV's is an estimate); an edit list may present fewer
    declared_frames: int = 0

    def set_rotation(self, degrees: float | None) -> None:
        """Record the display rotation (read off the first decoded frame); swaps the size."""
        rot = int(round((degrees or 0) / 90.0)) % 4 * 90
        if rot in (90, 270) and self.rotation in (0, 180):
            self.width, self.height = self.height, self.width
        self.rotation = rot

    @property
    def output_container(self) -> str:
        return output_container(self.container)

    def to_json(self) -> dict[str, Any]:
        return {
            "container": self.container, "width": self.width, "height": self.height, "rotation": self.rotation,
            "frames": self.frames, "fps": round(self.fps, 3), "duration_s": round(self.duration_s, 3),
            "codec": self.codec, "audio": list(self.audio), "dropped_streams": list(self.dropped_streams),
        }  # fmt: skip


def output_container(family: str) -> str:
    """The container veil writes for an input of ``family`` (see :data:`_OUTPUT`)."""
    return _OUTPUT.get(family, "mp4")


def _head(src: str | BinaryIO) -> bytes:
    if isinstance(src, str):
        with open(src, "rb") as fh:
            return fh.read(SNIFF_BYTES)
    pos = src.tell()
    head = src.read(SNIFF_BYTES)
    src.seek(pos)
    return head


def open_input(src: str | BinaryIO) -> tuple[av.container.InputContainer, VideoInfo]:
    """Open and probe ``src`` (a path or a seekable binary file); :class:`VideoError` if unusable."""
    family = sniff_container(_head(src))
    if family is None:
        raise VideoError(f"not a video file veil reads ({VIDEO_LABELS})")
    try:
        container = av.open(src, "r", metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"corrupt, truncated or unreadable video ({_why(exc)})") from None
    try:
        info = _probe(container, family)
    except VideoError:
        container.close()
        raise
    except Exception as exc:  # a header PyAV cannot describe: hostile or broken input
        container.close()
        raise VideoError(f"unreadable video header ({type(exc).__name__})") from None
    return container, info


def _why(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(": '")[0] if text else type(exc).__name__


def _probe(container: av.container.InputContainer, family: str) -> VideoInfo:
    if family == "matroska" and "webm" in (container.format.name or "") and _is_webm(container):
        family = "webm"
    videos = [s for s in container.streams.video if not _attached_pic(s)]
    if not videos:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
        raise VideoError(f"no video stream in this file (it holds {kinds})")
    v = videos[0]
    cc = v.codec_context
    if cc is None:
        raise VideoError("no decoder for this file's video codec")
    if not cc.width or not cc.height:
        raise VideoError("the video stream has no picture size (corrupt header)")
    if cc.width * cc.height > MAX_FRAME_PIXELS:
        raise VideoError(f"frames of {cc.width}x{cc.height} exceed veil's limit of {MAX_FRAME_PIXELS // 1_000_000} MP per frame")
    rate = v.average_rate or v.guessed_rate or v.base_rate or Fraction(25)
    declared = _declared_duration(container, v)
    duration = declared or (container.duration or 0) / 1e6
    frames = int(v.frames or 0)
    if not frames and duration:
        frames = int(round(duration * float(rate)))
    tags = [k.lower().split("-")[0] for k in container.metadata]
    tags += [k.lower().split("-")[0] for s in container.streams for k in s.metadata]
    tags = [t for t in tags if t not in _STRUCTURAL and not t.startswith("_statistics")]
    return VideoInfo(
        container=family, width=cc.width, height=cc.height, rotation=0, frames=frames, fps=float(rate),
        duration_s=duration, codec=cc.name, bit_rate=int(cc.bit_rate or container.bit_rate or 0),
        audio=[a.codec_context.name if a.codec_context else "unknown" for a in container.streams.audio],
        dropped_streams=[s.type for s in container.streams if s.type not in ("video", "audio")]
        + [f"video (extra #{s.index})" for s in videos[1:]]
        + ["attached picture" for s in container.streams.video if _attached_pic(s)],
        metadata=sorted(set(tags)) + (["chapters"] if _chapters(container) else []),
        declared_s=declared if family in _DECLARED_DURATION else 0.0,
        declared_frames=frames if v.frames and family in ("mp4", "mov") else 0,
    )  # fmt: skip


def _attached_pic(stream: av.stream.Stream) -> bool:
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first real video stream: cover art (an attached picture) is never the video.
    The probe, the decoder and the writer all take this one."""
    return next(s for s in container.streams.video if not _attached_pic(s))


def _declared_duration(container: av.container.InputContainer, v: av.video.stream.VideoStream) -> float:
    """The video stream's own duration from the header, in seconds (0 when not declared):
    an MP4/MOV track's (after its edit list), else Matroska's per-track ``DURATION`` tag,
    else the file's when the video is its only timed stream."""
    if v.duration and v.time_base:
        return float(v.duration * v.time_base)
    tag = next((str(val) for k, val in v.metadata.items() if k.upper().split("-")[0] == "DURATION"), "")
    parts = tag.split(":")
    if len(parts) == 3:
        try:
            return int(parts[0]) * 3600 + int(parts[1]) * 60 + float(parts[2])
        except ValueError:
            pass
    if not container.streams.audio and container.duration:
        return container.duration / 1e6
    return 0.0


#: Families whose headers declare a duration that the frames must fill (MPEG-TS and FLV
#: durations are FFmpeg's estimates from the bit rate or the last packets).
_DECLARED_DURATION = {"mp4", "mov", "matroska", "webm"}


def check_complete(info: VideoInfo, frames: int, first_s: float, last_s: float) -> None:
    """:class:`VideoError` when the decoded frames (``frames`` of them, the first and last
    presented at ``first_s`` and ``last_s``) fall short of what the header declares: a
    truncated file. Their span must fall short of the declared duration and, where an
    MP4/MOV index counts the frames, their number short of that count too: an MP4 trimmed
    by an edit list (its index counts frames never presented) is taken as it plays, one
    whose last frame is held for long (a screen recording) is whole, and a cut MKV, which
    declares no count, is caught by its duration alone."""
    step = 1 / info.fps if info.fps and info.fps > 0 else 0.04
    span = last_s - first_s + step
    few = not info.declared_frames or frames < info.declared_frames * 0.9 - 1
    if info.declared_s and span < info.declared_s * 0.9 - 2 * step and few:
        raise VideoError(f"truncated or corrupt video: {frames} frames decoded, {span:.2f} of "
                         f"{info.declared_s:.2f} seconds the header declares")  # fmt: skip


def _is_webm(container: av.container.InputContainer) -> bool:
    return all(s.codec_context is not None and s.codec_context.name in ("vp8", "vp9", "av1", "opus", "vorbis")
               for s in container.streams if s.type in ("video", "audio"))  # fmt: skip


def _chapters(container: av.container.InputContainer) -> bool:
    try:
        return bool(container.chapters())
    except Exception:  # older containers without chapter support
        return False


def upright(frame: av.VideoFrame, rotation: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """An ``H x W x 3`` RGB array of ``frame``, turned upright (as photos are: the pixels
    are rotated and the output carries no rotation tag). ``size``: the stored size every
    frame must have (a stream whose frames grow mid-way is refused before converting)."""
    pic = YuvPicture.of(frame, size)
    rgb = pic.rgb() if pic is not None else frame.to_ndarray(format="rgb24", src_color_range=frame.color_range)
    return np.ascontiguousarray(np.rot90(rgb, k=rotation // 90)) if rotation else rgb


#: (Kr, Kb) of the YUV colour matrices, by FFmpeg's colorspace number, that masked crops are
#: converted with: BT.709, BT.601 (as BT470BG and SMPTE 170M) and BT.2020 (non-constant
#: luminance); an unspecified matrix (2) is converted as BT.601, as FFmpeg's scaler does.
#: Any other (RGB-coded, YCgCo, SMPTE 240M, BT.2020 CL) goes through the scaler whole and
#: the output is written as untagged BT.601.
_MATRIX = {1: (0.2126, 0.0722), 2: (0.299, 0.114), 5: (0.299, 0.114), 6: (0.299, 0.114), 9: (0.2627, 0.0593)}
_FULL_RANGE = 2  # FFmpeg's AVCOL_RANGE_JPEG


@functools.lru_cache(maxsize=None)
def _yuv_maps(colorspace: int, color_range: int) -> tuple[np.ndarray, np.ndarray]:
    """The YUV-to-RGB map and its inverse, made once per colour description (not per frame)."""
    to_rgb = _yuv_to_rgb(colorspace, color_range)
    return to_rgb, np.linalg.inv(np.vstack([to_rgb, [0, 0, 0, 1]]))[:3].astype(np.float32)


def _yuv_to_rgb(colorspace: int, color_range: int) -> np.ndarray:
    """The 3x4 affine map from (Y, U, V, 1) to (R, G, B), 0-255, for :func:`cv2.transform`."""
    kr, kb = _MATRIX.get(colorspace, _MATRIX[2])
    kg = 1.0 - kr - kb
    ys, cs, y0 = (255.0, 255.0, 0.0) if color_range == _FULL_RANGE else (219.0, 224.0, 16.0)
    m = np.array([[1.0, 0.0, 2 * (1 - kr)], [1.0, -2 * (1 - kb) * kb / kg, -2 * (1 - kr) * kr / kg],
                  [1.0, 2 * (1 - kb), 0.0]]) * np.array([255 / ys, 255 / cs, 255 / cs])  # fmt: skip
    return np.hstack([m, -(m @ np.array([y0, 128.0, 128.0]))[:, None]]).astype(np.float32)


class YuvPicture:
    """A decoded 8-bit 4:2:0 frame, edited where it is masked and nowhere else.

    Only the crops that hold masked regions go to RGB and back (with the frame's own colour
    matrix and range, in OpenCV: ~1 ms for a whole 720p frame, against ~8 ms through
    FFmpeg's scaler both ways); every other pixel reaches the encoder exactly as decoded,
    untouched by any rounding. Use :meth:`of`, which returns None for frames that must go
    through RGB whole.
    """

    def __init__(self, frame: av.VideoFrame):
        self.width, self.height = frame.width, frame.height
        self.colorspace, self.color_range = frame.colorspace, frame.color_range
        self.data = frame.to_ndarray()  # Y, then U, then V: a copy, never the decoder's buffer
        n, w, h = self.width * self.height, self.width, self.height
        flat = self.data.reshape(-1)
        self.planes = (flat[:n].reshape(h, w), flat[n : n * 5 // 4].reshape(h // 2, w // 2),
                       flat[n * 5 // 4 :].reshape(h // 2, w // 2))  # fmt: skip
        self._to_rgb, self._to_yuv = _yuv_maps(self.colorspace, self.color_range)

    @classmethod
    def of(cls, frame: av.VideoFrame, size: tuple[int, int] | None = None,
           colour: tuple[int, int] | None = None) -> "YuvPicture | None":  # fmt: skip
        """The picture of ``frame``, or None where it must go through RGB whole: other pixel
        formats, odd sizes, a matrix :data:`_MATRIX` does not hold, or (``colour``: the
        output's colorspace and range) a frame whose own colour description differs."""
        if size is not None and (frame.width, frame.height) != size:
            raise VideoError(f"the picture size changes mid-stream ({size[0]}x{size[1]} to {frame.width}x{frame.height})")
        if frame.format.name != "yuv420p" or frame.width % 2 or frame.height % 2 or frame.colorspace not in _MATRIX:
            return None
        if colour is not None and (frame.colorspace, frame.color_range) != colour:
            return None
        return cls(frame)

    def rgb(self, rect: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The RGB pixels (uint8 HxWx3) of ``rect`` (even corners; None: the whole frame)."""
        x0, y0, x1, y1 = rect or (0, 0, self.width, self.height)
        y, u, v = self.planes[0][y0:y1, x0:x1], *(p[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] for p in self.planes[1:])
        size = (x1 - x0, y1 - y0)
        yuv = cv2.merge([y, *(cv2.resize(p, size, interpolation=cv2.INTER_LINEAR) for p in (u, v))])
        return cv2.transform(yuv, self._to_rgb)

    def paste(self, rect: tuple[int, int, int, int], rgb: np.ndarray, changed: np.ndarray) -> None:
        """Put the RGB pixels ``rgb`` back into ``rect`` (even corners) where ``changed``
        (bool, the crop's size) is set, and the chroma of each 2x2 block holding such a
        pixel (averaged over the block): every other sample keeps its decoded value, so a
        footprint's unmasked corners are not clipped to the legal range or smeared."""
        x0, y0, x1, y1 = rect
        y, u, v = cv2.split(cv2.transform(np.ascontiguousarray(rgb), self._to_yuv))
        half = ((x1 - x0) // 2, (y1 - y0) // 2)
        np.copyto(self.planes[0][y0:y1, x0:x1], y, where=changed)
        m = changed.view(np.uint8)  # any of the four (numpy's any over axes costs ~17x this)
        blocks = (m[0::2, 0::2] | m[0::2, 1::2] | m[1::2, 0::2] | m[1::2, 1::2]).view(bool)
        for plane, c in ((self.planes[1], u), (self.planes[2], v)):
            np.copyto(plane[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], cv2.resize(c, half, interpolation=cv2.INTER_AREA),
                      where=blocks)  # fmt: skip

    def frame(self) -> av.VideoFrame:
        frame = av.VideoFrame.from_ndarray(self.data, format="yuv420p")
        frame.colorspace, frame.color_range = self.colorspace, self.color_range
        return frame


def iter_frames(container: av.container.InputContainer) -> Iterator[av.VideoFrame]:
    """Every frame of the video (:func:`video_stream`), in presentation order; corrupt data is a VideoError."""
    stream = video_stream(container)
    stream.thread_type = "AUTO"
    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as exc:
        raise VideoError(f"corrupt video data ({_why(exc)})") from None


def default_crf(info: VideoInfo) -> int:
    """A CRF close to the input's quality, from its bits per pixel and frame.

    H.264 at CRF 23 lands near 0.1 bit per pixel for ordinary footage and each halving
    of the bitrate is worth about 6 CRF steps, so the input's bits per pixel maps to a
    CRF; clamped to 16 (no point in more) .. 30 (visibly soft).
    """
    if not info.bit_rate or not info.fps:
        return 23
    bpp = info.bit_rate / (info.width * info.height * info.fps)
    return int(min(30, max(16, round(23 - 6 * math.log2(max(bpp, 1e-4) / 0.1)))))


class VideoWriter:
    """Encodes upright RGB frames with given timestamps and copies audio packets.

    A failure while setting up closes what was opened and is a :class:`VideoError`; the
    caller discards the output (``atomic_file`` removes the temporary file)."""

    def __init__(self, dst: str | BinaryIO, source: av.container.InputContainer, info: VideoInfo, *,
                 codec: str | None, crf: int | None, audio: str, keep: tuple[str, ...]):  # fmt: skip
        self.info = info
        self.format = info.output_container
        self.notes: list[str] = []
        name = _ENCODERS[codec or "h264"]
        try:
            av.codec.Codec(name, "w")
        except Exception:
            raise VideoError(f"the {codec or 'h264'} encoder is not available in this PyAV build") from None
        try:
            self.out = av.open(dst, "w", format=self.format)
        except (av.error.FFmpegError, OSError, ValueError) as exc:  # a destination that cannot be written
            raise VideoError(f"cannot write the output ({_why(exc)})") from None
        try:
            self._add_streams(source, info, name, crf, audio, keep)
        except Exception as exc:
            self.abort()
            if isinstance(exc, VideoError):
                raise
            raise VideoError(f"cannot set up the {self.format} output ({type(exc).__name__}: {exc})") from None
        self._last_pts: int | None = None
        self._offset = 0  # added to the input's timestamps after a jump back (see write)
        self._audio_clock: dict[int, tuple[int, int]] = {}  # per audio stream: offset, last dts
        # one frame's duration in the time base (the header's rate, within sane bounds)
        self._step = max(1, round(1 / (min(max(info.fps or 25.0, 1.0), 240.0) * float(self.time_base))))
        self.frames = 0

    def _add_streams(self, source: av.container.InputContainer, info: VideoInfo, name: str, crf: int | None,
                     audio: str, keep: tuple[str, ...]) -> None:  # fmt: skip
        self.out.flags |= av.container.Flags.bitexact.value  # no muxer/encoder version tags
        src_v = video_stream(source)
        self.time_base = src_v.time_base or Fraction(1, 90000)
        v = self.out.add_stream(name, rate=Fraction(info.fps).limit_denominator(100000) if info.fps else 25)
        v.width, v.height = info.width, info.height
        odd = info.width % 2 or info.height % 2
        # 4:2:0 cannot hold an odd size: H.264 and HEVC crop in whole chroma samples (2 px);
        # the pixel size is kept and the chroma stored at full resolution instead
        v.pix_fmt = "yuv444p" if odd else "yuv420p"
        if odd:
            self.notes.append(f"odd picture size {info.width}x{info.height}: written as 4:4:4, which 4:2:0-only "
                              "players (most hardware decoders, browsers) refuse")  # fmt: skip
        if name == "libx265" and self.format in ("mp4", "mov"):
            v.codec_tag = "hvc1"  # parameter sets in the sample entry: what Apple's players need
        v.time_base = self.time_base
        v.codec_context.time_base = self.time_base
        # the input's colour description, so players show the colours it had (the pixels
        # are converted with its matrix); an untagged input stays untagged
        src_cc = src_v.codec_context
        self.colorspace, self.color_range = 2, 0  # unspecified
        if src_cc is not None and src_cc.colorspace in _MATRIX:  # else: written as untagged BT.601
            for attr in ("colorspace", "color_range", "color_primaries", "color_trc"):
                setattr(v.codec_context, attr, getattr(src_cc, attr))
            self.colorspace, self.color_range = src_cc.colorspace, src_cc.color_range
        v.options = {"crf": str(default_crf(info) if crf is None else crf), "preset": "veryfast"}
        if name == "libx265":
            v.options["x265-params"] = "log-level=error"
        self.video = v
        self.audio_map: dict[int, Any] = {}
        self.audio_encoders: dict[int, tuple[Any, av.AudioResampler]] = {}
        if audio == "keep":
            for a in source.streams.audio:
                if a.codec_context is None:
                    self.notes.append("an audio stream with no decoder was dropped")
                elif a.codec_context.name in _AUDIO_COPY.get(self.format, set()):
                    self.audio_map[a.index] = self.out.add_stream_from_template(a)
                else:
                    self.audio_encoders[a.index] = self._aac(a.codec_context)
            for s in self.audio_map.values():
                s.metadata.clear()
        for tag in _keep_tags(source, keep):
            self.out.metadata[tag[0]] = tag[1]

    def _aac(self, cc: Any) -> tuple[Any, av.AudioResampler]:
        """An AAC encoder for an audio stream that cannot be copied, and the resampler that
        feeds it (AAC takes a fixed set of rates; the timestamps, and so the audio's start
        offset, carry over through it)."""
        rate = cc.sample_rate or 48000
        higher = [r for r in _AAC_RATES if r >= rate]
        out_rate = min(higher) if higher else max(_AAC_RATES)
        layout = {1: "mono", 6: "5.1"}.get(cc.channels, "stereo")
        enc = self.out.add_stream("aac", rate=out_rate)
        enc.layout = layout
        why = "its header carries tags" if cc.name == "vorbis" else f"{self.format} cannot hold it"
        how = f", resampled from {rate} to {out_rate} Hz" if out_rate != rate else ""
        self.notes.append(f"audio {cc.name} re-encoded to AAC ({why}){how}")
        return enc, av.AudioResampler(format="fltp", layout=layout, rate=out_rate)

    def write(self, rgb: np.ndarray, pts: int | None) -> None:
        """Encode one frame at the input's ``pts``. The muxer needs strictly increasing
        timestamps: where the input's go back (concatenated segments, a reset clock) the
        rest follows on one frame after the last, at its own spacing (one offset, not a
        growing shift); a repeated or swapped neighbour gets one tick more; none: one frame on."""
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")  # to 4:2:0 with the input's matrix and range:
        frame = frame.reformat(format=self.video.pix_fmt, dst_colorspace=self.colorspace, dst_color_range=self.color_range)
        self.write_frame(frame, pts)

    def write_frame(self, frame: av.VideoFrame, pts: int | None) -> None:
        """:meth:`write` for a frame already made (e.g. :meth:`YuvPicture.frame`)."""
        last = self._last_pts
        if pts is None:
            pts = 0 if last is None else last + self._step
        else:
            pts += self._offset
        if last is not None and pts <= last:
            if last - pts > self._step:
                self._offset += last + self._step - pts
                pts = last + self._step
            else:
                pts = last + 1
        frame.pts, frame.time_base = pts, self.time_base
        self._last_pts = pts
        self._mux(self.video.encode(frame))
        self.frames += 1

    def copy_audio(self, packet: av.Packet) -> None:
        """Mux an input audio packet unchanged (or re-encode it where the container needs).
        Where the audio's clock jumps back (joined segments), the rest follows on, as the
        frames do in :meth:`write`; the payload is never touched."""
        idx = packet.stream.index
        if packet.dts is not None and (idx in self.audio_map or idx in self.audio_encoders):
            offset, last = self._audio_clock.get(idx, (0, None))
            dts = packet.dts + offset
            if last is not None and last - dts > max(1, packet.duration or 0):
                offset += last + max(1, packet.duration or 0) - dts
                dts = last + max(1, packet.duration or 0)
            if offset:
                packet.dts, packet.pts = dts, None if packet.pts is None else packet.pts + offset
            self._audio_clock[idx] = (offset, dts)
        if idx in self.audio_map:
            if packet.dts is None and packet.size == 0:
                return  # demuxer's end-of-stream marker
            packet.stream = self.audio_map[idx]
            self.out.mux(packet)
        elif idx in self.audio_encoders:
            enc, resampler = self.audio_encoders[idx]
            for fr in packet.decode():
                for out in resampler.resample(fr):
                    self._mux(enc.encode(out))

    def _mux(self, packets) -> None:
        for p in packets:
            self.out.mux(p)

    def close(self) -> None:
        self._mux(self.video.encode(None))
        for enc, resampler in self.audio_encoders.values():
            for out in resampler.resample(None):
                self._mux(enc.encode(out))
            self._mux(enc.encode(None))
        self.out.close()

    def abort(self) -> None:
        try:
            self.out.close()
        except Exception:  # the output is discarded anyway
            pass


def _keep_tags(source: av.container.InputContainer, keep: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for field_name in keep:
        for tag in _KEEPABLE_TAGS.get(field_name, ()):
            value = source.metadata.get(tag)
            if value:
                out.append((tag, str(value)[:256]))
                break
    return out
