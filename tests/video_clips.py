"""Test clips as bytes, for uploads: :func:`video_media.face_clip` (a real face photo moved
across frames, made with PyAV) written to a temporary file and read back. No tests here.
"""

from __future__ import annotations

import io
import tempfile
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
from video_media import face_clip as _write_clip

#: Plaintext every uploaded clip carries (its container metadata): never to be found on
#: disk. Its own text, not the other video tests' secret, which their files on disk hold.
PATTERN = "VEIL-UPLOAD-PLAINTEXT-7f3a9c"


@lru_cache(maxsize=None)
def face_clip(seconds: float = 1.0, fps: int = 12, size: tuple[int, int] = (320, 240), face_px: int = 90) -> bytes:
    """An H.264 MP4 of ``seconds`` with a real face gliding across it and :data:`PATTERN` in its metadata."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "clip.mp4"
        _write_clip(path, frames=max(1, round(seconds * fps)), fps=fps, size=size, face_px=face_px, metadata=True,
                    secret=PATTERN)
        return path.read_bytes()


def avi_clip(frames: int = 12, fps: int = 12, size: tuple[int, int] = (320, 240)) -> bytes:
    """An AVI (H.264) of a real face moving across a plain background, at a constant rate
    (AVI has no per-frame timestamps, so none are set)."""
    from video_media import face_photo

    w, h = size
    face = face_photo(90)
    fh, fw = face.shape[:2]
    buf = io.BytesIO()
    with av.open(buf, "w", format="avi") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            frame = np.full((h, w, 3), 120, np.uint8)
            x = min(w - fw, 10 + i * 10)
            frame[20 : 20 + fh, x : x + fw] = face
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def frame_count(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as c:
        return sum(1 for _ in c.decode(video=0))
