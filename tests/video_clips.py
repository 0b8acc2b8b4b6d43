"""Test clips as bytes, for uploads: :func:`video_media.face_clip` (a real face photo moved
across frames, made with PyAV) written to a temporary file and read back. No tests here.
"""

from __future__ import annotations

import io
import tempfile
from functools import lru_cache
from pathlib import Path

import av
from video_media import SECRET, face_clip as _write_clip

#: Plaintext every clip carries (its container metadata): never to be found on disk.
PATTERN = SECRET


@lru_cache(maxsize=None)
def face_clip(seconds: float = 1.0, fps: int = 12, size: tuple[int, int] = (320, 240), face_px: int = 90) -> bytes:
    """An H.264 MP4 of ``seconds`` with a real face gliding across it and :data:`PATTERN` in its metadata."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "clip.mp4"
        _write_clip(path, frames=max(1, round(seconds * fps)), fps=fps, size=size, face_px=face_px, metadata=True)
        return path.read_bytes()


def frame_count(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as c:
        return sum(1 for _ in c.decode(video=0))
