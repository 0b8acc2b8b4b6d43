"""Draw docs/looks.png: the astronaut photo (scikit-image) before and after each look.

Rows: blur, pixelate, fill; columns: the original, then box, ellipse and mask shapes.
The face box and landmarks are fixed (the astronaut's), so no model is needed and the
image is the same on every machine (the blur's dithering is seeded).

    python scripts/looks_strip.py [docs/looks.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from skimage import data

from veil.detection.types import Detection
from veil.masking import mask_detections
from veil.pipeline.options import Options

FACE = (180.0, 66.0, 270.0, 176.0)
LANDMARKS = np.array([[205, 105], [245, 104], [226, 127], [208, 147], [242, 146]], dtype=np.float32)
CROP = (120, 10, 330, 240)  # x0, y0, x1, y1 around the face
TILE = 150


def main(dst: Path) -> None:
    rgb = np.ascontiguousarray(data.astronaut())
    face = Detection("face", 0.9, FACE, landmarks=LANDMARKS)
    x0, y0, x1, y1 = CROP
    rows = []
    for style in ("blur", "pixelate", "fill"):
        tiles = [rgb[y0:y1, x0:x1]]
        for shape in ("box", "ellipse", "mask"):
            out, _ = mask_detections(rgb, [face], Options(style=style, shape=shape), rng=np.random.default_rng(0))
            tiles.append(out[y0:y1, x0:x1])
        rows.append(np.hstack([np.asarray(Image.fromarray(t).resize((TILE, TILE * (y1 - y0) // (x1 - x0)), Image.LANCZOS)) for t in tiles]))
    strip = Image.fromarray(np.vstack(rows))
    draw = ImageDraw.Draw(strip)
    th = TILE * (y1 - y0) // (x1 - x0)
    for j, style in enumerate(("blur", "pixelate", "fill")):
        for i, label in enumerate(("original", "box", "ellipse", "mask")):
            draw.text((i * TILE + 4, j * th + 3), f"{style} / {label}" if i else label, fill=(255, 255, 255))
    strip.save(dst, optimize=True)
    print(f"{dst}: {dst.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/looks.png"))
