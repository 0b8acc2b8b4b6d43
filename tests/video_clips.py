"""Short test clips made with PyAV: real face photos pasted into frames and moved (no tests here).

The faces are scikit-image's astronaut and matplotlib's Grace Hopper (real photos from
test dependencies). Each clip carries :data:`PATTERN` in its container metadata, a
byte string the privacy tests look for on disk.
"""

from __future__ import annotations

import io
from functools import lru_cache

import av
import numpy as np
from PIL import Image

#: Plaintext every clip carries (a container comment): never to be found on disk.
PATTERN = "VEIL-UPLOAD-PLAINTEXT-7f3a9c"


@lru_cache(maxsize=None)
def _faces() -> tuple[np.ndarray, np.ndarray]:
    from matplotlib import cbook
    from skimage import data as skdata

    astro = Image.fromarray(skdata.astronaut()).crop((140, 30, 300, 210))
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        grace = im.convert("RGB").crop((150, 90, 380, 360))
    return np.asarray(astro), np.asarray(grace)


@lru_cache(maxsize=None)
def face_clip(seconds: float = 1.0, fps: int = 12, size: tuple[int, int] = (320, 240), face_px: int = 90) -> bytes:
    """An H.264 MP4 with two real faces gliding across a textured background."""
    w, h = size
    astro, grace = (np.asarray(Image.fromarray(f).resize((face_px, int(face_px * f.shape[0] / f.shape[1]))))
                    for f in _faces())
    rng = np.random.default_rng(7)
    background = rng.integers(60, 200, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        out.metadata["comment"] = PATTERN
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        n = max(1, round(seconds * fps))
        for i in range(n):
            frame = background.copy()
            t = i / max(1, n - 1)
            for face, x0, y0, dx in ((astro, 5, 10, w // 2 - face_px), (grace, w - face_px - 5, h - grace.shape[0] - 5, -(w // 3))):
                x, y = int(x0 + t * dx), y0
                fh, fw = face.shape[:2]
                frame[y : y + fh, x : x + fw] = face[: h - y, : w - x]
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def frame_count(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as c:
        return sum(1 for _ in c.decode(video=0))
