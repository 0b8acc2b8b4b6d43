"""Reading labelled photo sets (``labels.json`` beside an ``images/`` folder)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from veil.errors import VeilError


@dataclass
class LabelledImage:
    path: Path
    width: int
    height: int
    boxes: dict[str, np.ndarray]  # target -> (N, 4) counted boxes
    ignore: dict[str, np.ndarray]  # target -> (M, 4) crowd/ignore regions


def load_labels(path: Path) -> list[LabelledImage]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VeilError(f"cannot read labels file {path}: {exc}") from None
    if not isinstance(data, list):
        raise VeilError(f"{path}: expected a JSON list of images")
    root = Path(path).parent
    out = []
    for item in data:
        boxes: dict[str, list] = {}
        ignore: dict[str, list] = {}
        for b in item.get("boxes", []):
            dst = ignore if b.get("ignore") else boxes
            dst.setdefault(b["cls"], []).append([b["x1"], b["y1"], b["x2"], b["y2"]])
        out.append(
            LabelledImage(
                path=root / item["image"],
                width=int(item.get("width", 0)),
                height=int(item.get("height", 0)),
                boxes={k: np.array(v, dtype=np.float32) for k, v in boxes.items()},
                ignore={k: np.array(v, dtype=np.float32) for k, v in ignore.items()},
            )
        )
    return out


def targets_in(images: list[LabelledImage]) -> list[str]:
    seen: dict[str, None] = {}
    for im in images:
        for k in list(im.boxes) + list(im.ignore):
            seen[k] = None
    return list(seen)
