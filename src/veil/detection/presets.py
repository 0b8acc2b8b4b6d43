"""Named presets: which passes run for each target and how their votes are combined.

Recall comes first. Faces use an ensemble of CenterFace and YuNet at the photo's own
size and at an upscaled size (small faces need pixels); a face is kept when one pass is
confident, or when two passes agree on a weaker candidate. People and plates run YOLO
at the full photo and, for large photos, on overlapping tiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FacePass:
    model: str  # "centerface" | "yunet"
    scale: float  # 1.0 = the photo's size; 2.0 = upscaled for small faces
    floor: float  # candidates below this score are not even voted on


@dataclass(frozen=True)
class FacePlan:
    passes: tuple[FacePass, ...]
    accept: float  # one pass this sure is enough
    agree: float  # or: >= 2 passes whose summed scores reach this
    #: the upscaled pass is limited to this many input pixels (keeps large photos fast;
    #: faces in them already have pixels at 1x)
    upscale_budget: float = 1.0e6


@dataclass(frozen=True)
class YoloPlan:
    model: str
    sizes: tuple[int, ...]
    threshold: float
    tile_above: float = 0.0  # megapixels above which 2x2 tiles are added (0 = never)


@dataclass(frozen=True)
class Preset:
    name: str
    faces: FacePlan
    persons: YoloPlan
    plates: YoloPlan
    person_heads: bool = True
    extra: dict = field(default_factory=dict, hash=False, compare=False)


_CF, _YN = "centerface", "yunet"

PRESETS: dict[str, Preset] = {
    "fast": Preset(
        name="fast",
        faces=FacePlan((FacePass(_CF, 1.0, 0.2),), accept=0.25, agree=9.0),
        persons=YoloPlan("person-yolo11n-pose", (640,), 0.3),
        plates=YoloPlan("plate-yolov8n", (640,), 0.1),
    ),
    "balanced": Preset(
        name="balanced",
        faces=FacePlan(
            (FacePass(_CF, 1.0, 0.05), FacePass(_CF, 2.0, 0.05), FacePass(_YN, 1.0, 0.3), FacePass(_YN, 2.0, 0.3)),
            accept=0.35,
            agree=0.3,
        ),
        persons=YoloPlan("person-yolo11n-pose", (960,), 0.25, tile_above=4.0),
        plates=YoloPlan("plate-yolov8n", (640, 1280), 0.05),
    ),
    "thorough": Preset(
        name="thorough",
        faces=FacePlan(
            (FacePass(_CF, 1.0, 0.05), FacePass(_CF, 2.0, 0.05), FacePass(_YN, 1.0, 0.25), FacePass(_YN, 2.0, 0.25)),
            accept=0.3,
            agree=0.25,
            upscale_budget=4.0e6,
        ),
        persons=YoloPlan("person-yolo11n-pose", (1280,), 0.2, tile_above=1.5),
        plates=YoloPlan("plate-yolov8n", (640, 1280), 0.05, tile_above=4.0),
    ),
}


def get_preset(name: str) -> Preset:
    from veil.errors import OptionsError

    try:
        return PRESETS[name]
    except KeyError:
        raise OptionsError(f"preset must be one of {', '.join(PRESETS)}; got {name!r}", field="preset") from None
