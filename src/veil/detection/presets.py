"""Named presets: which passes run for each target and how their votes are combined.

Recall comes first, and no single small model is good enough, so each target runs an
ensemble of *passes* (a model at a given input size or scale). Candidates of all passes
are clustered; a cluster is kept when one pass is sure of it (``accept``) or when at
least two passes see it with enough summed confidence (``agree``). Faces run one strong
detector (YOLO11m trained on WIDER FACE) on the whole photo and, where that shrinks a large
photo, on tiles (``thorough`` adds CenterFace and YuNet, upscaled for small faces; ``fast``
and the permissive setting run CenterFace, plus YuNet in permissive mode); people run
YOLO11-pose (in int8 in ``balanced``) and NanoDet at several sizes, and both on full-size
tiles of large photos; plates run YOLOv8 on the whole photo at 640 and take a second look
where plates are small: on crops around the small and mid-sized vehicles NanoDet finds that
hold no plate the whole photo showed, each zoomed so its plate is ~32 px (``balanced``;
NanoDet's forward pass is shared with the person passes, or NanoDet in int8 where people are
not a target), or on the whole photo at 1280 and tiles (``thorough``). A plate box needs
evidence: below even odds it is kept only on a vehicle that same NanoDet pass sees
(``Plan.evidence_score``).
"""

from __future__ import annotations

from dataclasses import dataclass

from veil.errors import OptionsError


@dataclass(frozen=True)
class Pass:
    model: str
    floor: float  # candidates below this score are not even voted on
    accept: float  # one pass this sure is enough
    scale: float = 1.0  # face models: resize factor of the photo (2.0 = upscaled)
    #: upscaled face passes: where ``Plan.upscale_budget`` caps the factor below this, the
    #: pass is skipped (too little gain for its cost); at most 1.0 it runs at the capped
    #: factor but never below 1x, i.e. one pass of that model at the best scale affordable
    min_scale: float = 1.3
    size: int = 0  # YOLO/NanoDet: long side of the model input in pixels
    tiles: bool = False  # run on 2x2 overlapping tiles instead of the whole photo
    #: tiles: instead of 2x2, as many tiles as it takes for each to be shrunk by at most
    #: this factor into the model's input (none where the whole photo already is; one pass
    #: over the whole photo at this factor where it fits ``Plan.tiles_whole_up_to``)
    tile_scale: float = 0.0
    #: whole-photo YOLO passes: the input size on photos the plan also tiles (``tile_scale``
    #: tiles): the tiles see the small faces, so this pass only needs the largest ones; none
    #: where the tiles run as one whole-photo pass (``Plan.tiles_whole_up_to``), which sees them
    #: too
    size_if_tiled: int = 0
    #: face models: shrink the photo to at most this many pixels first (0 = never); the
    #: fast preset's way to keep large photos cheap
    max_pixels: float = 0.0
    #: plates: a second look, only on crops around the vehicles NanoDet finds that are small
    #: in the photo and hold no plate the earlier passes found (``Plan.vehicle_found_score``),
    #: each zoomed so its plate gets pixels (see ``Plan.vehicle_*``); ``size``
    #: caps the zoom at the scale a whole-photo pass at that size would use
    vehicles: bool = False
    #: face models (YOLO): a second look at ``tile_scale``, only on tiles around the faces the
    #: plan's earlier passes found at most this many pixels tall (0 = off): small faces come
    #: in crowds, and a crowd's faces sit at the edge of what a shrunk photo resolves, so
    #: where one is found the others are looked for at full size
    around_small: float = 0.0
    #: around_small passes: the look is upscaled so that the smallest of those faces (their
    #: 10th percentile height) reach this many pixels, the size from which the model finds
    #: nearly every face (0 = ``tile_scale`` as is); never below ``tile_scale``, and above it
    #: at most as far as ``Plan.upscale_budget`` input pixels for the whole photo allow
    small_px: float = 0.0
    #: around_small passes: boxes taller than ``around_small`` need this score (0 = ``floor``);
    #: ``floor`` then holds for the small ones only: a face of 12 px, found among other small
    #: faces, scores low at the model's limit, while a larger box is held to the plan's usual bar
    large_floor: float = 0.0


@dataclass(frozen=True)
class Plan:
    passes: tuple[Pass, ...]
    agree: float = 99.0  # summed score of >= 2 agreeing passes that keeps weaker candidates
    cluster_iou: float = 0.3
    #: upscaled face passes (and an upscaled look around small faces, ``Pass.small_px``) are
    #: capped at this many input pixels: faces in large photos already have pixels at 1x,
    #: and the cap keeps large photos fast
    upscale_budget: float = 1.0e6
    #: tiled passes run only on photos larger than this many megapixels
    tile_above: float = 0.0
    #: tiled passes (``Pass.tile_scale``) run as one pass over the whole photo at their
    #: scale where that input holds at most this many pixels: overlapping tiles look at
    #: more pixels than the photo has and cut objects at their edges, so tiles are only
    #: there to bound memory on large photos; a whole-photo pass kept for objects too
    #: large for tiles (``Pass.size_if_tiled``) is then skipped, as this one sees them whole
    tiles_whole_up_to: float = 0.0
    #: vehicle passes: NanoDet's input size (the person passes' forward pass is reused)
    vehicle_size: int = 416
    #: ... the model that finds the vehicles where no person pass ran NanoDet at that size
    #: (people not a target): NanoDet in int8, 2.4x as fast, whose vehicles are the float
    #: model's (99.8% of them at score 0.2, scores 0.005 lower in the median)
    vehicle_model: str = "nanodet-int8"
    #: ... its least vehicle score (car, motorcycle, bus, truck)
    vehicle_score: float = 0.3
    #: ... a crop is zoomed so that its vehicle is this tall in the plate model's input: a
    #: plate is about a tenth of its vehicle's height, and the model wants ~32 px plates
    vehicle_px: int = 320
    #: ... vehicles that zoom would enlarge by less than this over the plan's whole-photo
    #: passes are skipped (their plate already has the pixels)
    vehicle_gain: float = 1.25
    #: ... each crop is the vehicle's box grown by this share of its size on every side;
    #: overlapping crops merge, zoomed for their smallest vehicle
    vehicle_margin: float = 0.1
    #: ... a vehicle holding the centre of a whole-photo plate candidate at least this sure
    #: (and lying on no other vehicle) gets no crop: that plate is kept on its evidence, and
    #: the crop would find it again; fainter boxes (a badge, a grille's text) do not count
    vehicle_found_score: float = 0.2
    #: plates need evidence: a kept box scoring below this must have its centre on a
    #: vehicle NanoDet sees (at ``vehicle_size``, score >= ``evidence_vehicle_score``);
    #: character-like texture alone (a face mask's print, a watermark) is not a plate.
    #: 0 = every voted box is kept
    evidence_score: float = 0.0
    #: ... the least vehicle score that counts as evidence: a second opinion on a box the
    #: plate model already found, so lower than the score that earns a zoomed crop
    evidence_vehicle_score: float = 0.2


@dataclass(frozen=True)
class Preset:
    name: str
    face: Plan
    person: Plan
    plate: Plan
    #: hide the head of a person whose face was not found (consistency signal)
    person_heads: bool = True
    #: faces when only permissively licensed weights may run (``face``'s model is AGPL)
    permissive_face: Plan | None = None


_CF, _YN, _POSE, _ND, _PLATE = "centerface", "yunet", "person-yolo11n-pose", "nanodet", "plate-yolov8n"
#: the pose model in int8 (``balanced``): 1.35x as fast with the same person recall at 640
#: (83.8% on both COCO sets); ``thorough`` keeps the float model, whose 1280 pass the int8
#: build would cost a person of >= 64 px there
_POSE8 = "person-yolo11n-pose-int8"
_YF = "face-yolo11m"
#: a plate box this confident needs no vehicle under it (close-ups of a car's rear, where
#: the vehicle fills the photo and NanoDet may not see it): the model's even odds
PLATE_CONFIDENT = 0.5


def _person_tiles(pose: str) -> tuple[Pass, Pass]:
    """People on tiles at full size (each tile shrunk by at most 1x into the 640 input), as a
    single photo up to 640 px is seen whole: pose (model ``pose``) and NanoDet, so the vote
    works as there."""
    return (
        Pass(pose, 0.15, 0.3, size=640, tiles=True, tile_scale=1.0),
        Pass(_ND, 0.15, 0.4, size=640, tiles=True, tile_scale=1.0),
    )


#: faces from the MIT-licensed models alone: CenterFace at 1x and upscaled, YuNet once
_PERMISSIVE_FACE = Plan(
    (Pass(_CF, 0.05, 0.35), Pass(_CF, 0.05, 0.35, scale=2.0), Pass(_YN, 0.3, 0.35, scale=2.0, min_scale=1.0)),
    agree=0.3,
)

PRESETS: dict[str, Preset] = {
    "fast": Preset(
        name="fast",
        face=Plan((Pass(_CF, 0.2, 0.2, max_pixels=0.25e6),)),
        person=Plan((Pass(_ND, 0.3, 0.3, size=416),)),
        plate=Plan((Pass(_PLATE, 0.05, 0.05, size=480),), evidence_score=PLATE_CONFIDENT),
    ),
    "balanced": Preset(
        name="balanced",
        # YOLO11m on the whole photo at 640, and on tiles where that would shrink the photo
        # by more than 2x (a 16 px face stays >= 8 px in the model's input): up to 1 MP of
        # input as one pass over the whole photo at 0.5x, beyond that on tiles, where the
        # whole-photo pass, there only for faces too large for a tile, runs at 416; where
        # they find faces of at most 24 px (a crowd), tiles at full size (upscaled so the
        # smallest found reach 14 px, up to 4 MP of input) on those faces and, tile by tile,
        # on the small faces that look finds (a crowd is followed to its edge); small faces
        # there count from a lower score than the usual 0.125
        face=Plan(
            (
                Pass(_YF, 0.125, 0.125, size=640, size_if_tiled=416),
                Pass(_YF, 0.125, 0.125, size=640, tiles=True, tile_scale=0.5),
                Pass(_YF, 0.03, 0.03, size=640, tile_scale=1.0, around_small=24, small_px=14, large_floor=0.125),
            ),
            upscale_budget=4.0e6,
            tiles_whole_up_to=1.0e6,
        ),
        # people: YOLO11-pose and NanoDet on the whole photo and, on photos over 1 MP (which
        # those shrink more than 2x), both at full size: on the whole photo up to 2.1 MP,
        # beyond that on tiles, each voted on as a whole photo is (a weak pose box kept where
        # NanoDet agrees)
        person=Plan(
            (
                Pass(_POSE8, 0.15, 0.3, size=640),
                Pass(_ND, 0.15, 0.5, size=416),
                Pass(_ND, 0.15, 0.4, size=640),
                *_person_tiles(_POSE8),
            ),
            agree=0.6,
            cluster_iou=0.5,
            tile_above=1.0,
            tiles_whole_up_to=2.1e6,
        ),
        plate=Plan(
            (Pass(_PLATE, 0.05, 0.05, size=640), Pass(_PLATE, 0.05, 0.05, size=1280, vehicles=True)),
            cluster_iou=0.5,
            evidence_score=PLATE_CONFIDENT,
        ),
        permissive_face=_PERMISSIVE_FACE,
    ),
    "thorough": Preset(
        name="thorough",
        face=Plan(
            (
                Pass(_YF, 0.1, 0.1, size=640),
                Pass(_YF, 0.1, 0.1, size=640, tiles=True, tile_scale=1.0),
                Pass(_CF, 0.05, 0.5),
                Pass(_CF, 0.05, 0.5, scale=2.0),
                Pass(_YN, 0.25, 0.5),
                Pass(_YN, 0.25, 0.5, scale=2.0),
            ),
            agree=0.5,
            upscale_budget=4.0e6,
            tiles_whole_up_to=1.0e6,
        ),
        person=Plan(
            (
                Pass(_POSE, 0.15, 0.3, size=1280),
                Pass(_ND, 0.15, 0.5, size=416),
                Pass(_ND, 0.15, 0.4, size=640),
                Pass(_ND, 0.15, 0.5, size=800),
                *_person_tiles(_POSE),
            ),
            agree=0.6,
            cluster_iou=0.5,
            tile_above=1.5,
            tiles_whole_up_to=2.1e6,
        ),
        plate=Plan(
            (Pass(_PLATE, 0.05, 0.05, size=640), Pass(_PLATE, 0.05, 0.05, size=1280), Pass(_PLATE, 0.05, 0.05, size=1280, tiles=True)),
            cluster_iou=0.5,
            tile_above=4.0,
            evidence_score=PLATE_CONFIDENT,
        ),
        permissive_face=Plan(
            (Pass(_CF, 0.05, 0.3), Pass(_CF, 0.05, 0.3, scale=2.0), Pass(_YN, 0.25, 0.3), Pass(_YN, 0.25, 0.3, scale=2.0)),
            agree=0.25,
            upscale_budget=4.0e6,
        ),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise OptionsError(f"preset must be one of {', '.join(PRESETS)}; got {name!r}", field="preset") from None
