"""The detection type shared by every detector, the masking stage, the API and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Targets veil can find. ``head`` is not detected directly: it is the consistency
#: signal of a person whose head shows while no face was found there.
TARGETS: tuple[str, ...] = ("face", "person", "plate")
ALL_KINDS: tuple[str, ...] = TARGETS + ("head",)


@dataclass
class Detection:
    """One object found in an image.

    ``box`` is ``(x1, y1, x2, y2)`` in pixels of the upright (EXIF-oriented) image.
    Optional geometry lets the masking stage follow the object's own shape:
    ``landmarks`` (face points, ``(K, 2)``), ``keypoints`` (person pose, ``(17, 3)`` as
    x, y, confidence in COCO order), ``polygon`` (``(N, 2)`` outline, e.g. a plate).
    """

    target: str
    score: float
    box: tuple[float, float, float, float]
    landmarks: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    polygon: np.ndarray | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def to_json(self, ndigits: int = 1) -> dict[str, Any]:
        """The public JSON shape: target, score, box (and geometry when present)."""
        out: dict[str, Any] = {
            "target": self.target,
            "score": round(float(self.score), 4),
            "box": [round(float(v), ndigits) for v in self.box],
        }
        if self.landmarks is not None:
            out["landmarks"] = np.round(self.landmarks, ndigits).tolist()
        if self.keypoints is not None:
            out["keypoints"] = np.round(self.keypoints, 3).tolist()
        if self.polygon is not None:
            out["polygon"] = np.round(self.polygon, ndigits).tolist()
        return out

    def scaled(self, sx: float, sy: float, dx: float = 0.0, dy: float = 0.0) -> "Detection":
        """A copy mapped by ``x * sx + dx``, ``y * sy + dy`` (tiles, resized inputs)."""

        def pts(a: np.ndarray | None) -> np.ndarray | None:
            if a is None:
                return None
            b = np.array(a, dtype=np.float32, copy=True)
            b[:, 0] = b[:, 0] * sx + dx
            b[:, 1] = b[:, 1] * sy + dy
            return b

        x1, y1, x2, y2 = self.box
        return Detection(
            target=self.target,
            score=self.score,
            box=(x1 * sx + dx, y1 * sy + dy, x2 * sx + dx, y2 * sy + dy),
            landmarks=pts(self.landmarks),
            keypoints=pts(self.keypoints),
            polygon=pts(self.polygon),
            source=self.source,
            extra=dict(self.extra),
        )

    def clipped(self, width: int, height: int) -> "Detection":
        x1, y1, x2, y2 = self.box
        self.box = (
            float(min(max(x1, 0), width)),
            float(min(max(y1, 0), height)),
            float(min(max(x2, 0), width)),
            float(min(max(y2, 0), height)),
        )
        return self
