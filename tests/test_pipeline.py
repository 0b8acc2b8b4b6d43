"""The core pipeline: detection -> masking -> verify -> encoding, and its report."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from veil.detection.types import Detection
from veil.errors import OptionsError
from veil.evaluation.metric import COVER, MATCH_IOU, covered_fraction
from veil.imageio import load_image
from veil.pipeline.core import AnonymizeResult, Report, anonymize, anonymize_bytes, anonymize_file
from veil.masking import mask_detections
from veil.pipeline.options import Options

FACE = (180.0, 66.0, 270.0, 176.0)


def _png(rgb: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg(rgb: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=kw.pop("quality", 92), **kw)
    return buf.getvalue()


def _near(box, ref, slack: float = 10.0) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return ref[0] - slack < cx < ref[2] + slack and ref[1] - slack < cy < ref[3] + slack


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# -- pipeline logic, with the real engine on real photos -------------------------------------
def _boxes(rep: Report, target: str, stage: str | None = None) -> list[tuple[float, float, float, float]]:
    return [r.box for r in rep.regions if r.target == target and (stage is None or r.stage == stage)]


def _same(a: np.ndarray, b: np.ndarray, box) -> bool:
    x1, y1, x2, y2 = (round(v) for v in box)
    return np.array_equal(a[y1:y2, x1:x2], b[y1:y2, x1:x2])


def _changed(a: np.ndarray, b: np.ndarray, box, inset: int = 4, by: float = 8.0) -> bool:
    x1, y1, x2, y2 = (round(v) for v in box)
    core = (slice(y1 + inset, y2 - inset), slice(x1 + inset, x2 - inset))
    return float(np.abs(a[core].astype(float) - b[core]).mean()) > by


def test_targets_filter_and_heads_follow_faces(photos, engine):
    img = load_image(photos["bus"])
    out, rep = anonymize(img, Options(targets=("face",)), engine=engine)
    faces = _boxes(rep, "face")
    assert set(rep.detections) == {"face"} and rep.detections["face"] == len(faces) >= 2
    assert {(r.target, r.stage) for r in rep.regions} == {("face", "detect")}
    assert rep.models == engine.model_names(("face",)) and rep.models
    assert rep.source == "engine" and rep.verify_found is None and set(rep.timings_ms) == {"decode", "detect", "mask"}
    assert all(_changed(out, img.rgb, b) for b in faces)
    assert _same(out, img.rgb, (40, 700, 240, 900))  # the people's bodies are left alone

    _, rep = anonymize(img, Options(targets=("person",)), engine=engine)
    assert set(rep.detections) == {"person"} and rep.detections["person"] >= 3  # no heads without faces
    plate_out, rep = anonymize(img, Options(targets=("plate",)), engine=engine)
    assert set(rep.detections) <= {"plate"} and {r.target for r in rep.regions} <= {"plate"}
    assert all(_same(plate_out, img.rgb, b) for b in faces)

    # A face the detectors miss (here: painted over) leaves its person's head to be hidden
    # (heads come from the person pass: people among the targets, not the default).
    covered, _ = anonymize(img, Options(style="fill", strength=100), regions=[Detection("face", 1.0, b) for b in faces])
    img2 = load_image(_png(covered))
    everything = ("face", "person", "plate")
    _, rep = anonymize(img2, Options(targets=everything), engine=engine)
    assert rep.detections.get("head", 0) >= 1 and rep.detections["person"] >= 3
    heads = _boxes(rep, "head")
    assert any(_near(f, h, slack=0) for h in heads for f in faces), (heads, faces)
    assert {r.shape for r in rep.regions if r.target == "head"} == {"ellipse"}  # heads look like faces
    _, rep_no_heads = anonymize(img2, Options(targets=everything, hide_heads=False), engine=engine)
    assert "head" not in rep_no_heads.detections and not _boxes(rep_no_heads, "head")
    assert rep_no_heads.detections == {k: v for k, v in rep.detections.items() if k != "head"}


def test_explicit_regions_are_rendered_without_detection(astronaut_rgb, engine):
    img = load_image(_png(astronaut_rgb))
    out, rep = anonymize(img, Options(verify=True), regions=[Detection("face", 1.0, (270, 176, 180, 66))], engine=engine)
    assert rep.source == "regions" and rep.verify_found is None and rep.models == []
    assert [(r.target, r.stage, r.box) for r in rep.regions] == [("face", "manual", FACE)]
    assert rep.detections == {"face": 1} and "verify" not in rep.timings_ms
    assert not np.array_equal(out[100:140, 200:250], astronaut_rgb[100:140, 200:250])
    assert np.array_equal(out[300:, :], astronaut_rgb[300:, :])
    # Exactly the given regions: the real face, which the engine does find, stays as it is
    # (no detection and no verify pass), and a region past the edge is clipped to the image.
    assert _boxes(anonymize(img, Options(targets=("face",)), engine=engine)[1], "face")
    out, rep = anonymize(img, Options(verify=True), regions=[Detection("plate", 0.5, (400, 420, 600, 470))], engine=engine)
    assert [(r.target, r.stage, r.box) for r in rep.regions] == [("plate", "manual", (400.0, 420.0, 512.0, 470.0))]
    assert rep.verify_found is None and not np.array_equal(out[420:470, 400:512], astronaut_rgb[420:470, 400:512])
    assert np.array_equal(out[:400], astronaut_rgb[:400]) and np.array_equal(out[:, :390], astronaut_rgb[:, :390])
    out, rep = anonymize(img, Options(), regions=[])
    assert rep.regions == [] and rep.detections == {} and np.array_equal(out, astronaut_rgb)
    with pytest.raises(OptionsError, match="unknown target"):
        anonymize(img, Options(), regions=[Detection("cat", 1.0, FACE)])
    with pytest.raises(OptionsError, match="finite"):
        anonymize(img, Options(), regions=[Detection("face", 1.0, (0, 0, float("nan"), 9))])


def test_verify_pass_hides_what_is_still_found(astronaut_rgb, engine):
    """Only plates are asked for, so the first pass leaves the astronaut's face; the verify
    pass (the real face detectors on the output) finds it and hides it at full strength."""
    img = load_image(_png(astronaut_rgb))
    out, rep = anonymize(img, Options(targets=("plate",), verify=False), engine=engine)
    assert rep.verify_found is None and not _boxes(rep, "face") and _same(out, astronaut_rgb, FACE)
    out, rep = anonymize(img, Options(targets=("plate",), verify=True), engine=engine)
    assert rep.verify_found == 1 and "verify" in rep.timings_ms
    assert [r.stage for r in rep.regions if r.target == "face"] == ["verify"]
    assert {r.stage for r in rep.regions if r.target != "face"} <= {"detect"}
    assert "face" not in rep.detections  # the report's detections are the first pass's
    (face,) = _boxes(rep, "face", "verify")
    assert _iou(face, FACE) > 0.7 and _changed(out, astronaut_rgb, FACE, inset=20, by=15)
    assert not [d for d in engine.detect(out, ("face",)) if d.target == "face" and d.score >= 0.6]
    # ``thorough`` turns the verify pass on by default (its engine comes from get_engine)
    _, rep = anonymize(img, Options(targets=("plate",), preset="thorough"))
    assert rep.preset == "thorough" and rep.verify_found == 1 and len(_boxes(rep, "face", "verify")) == 1


def test_report_json_has_no_pixels_or_gps(astronaut_rgb, engine):
    ex = Image.Exif()
    ex[0x8825] = {1: "N", 2: (52.0, 22.0, 12.5), 27: b"ASCII\x00\x00\x00GPS-FIX"}
    data = _jpeg(astronaut_rgb, exif=ex.tobytes(), comment=b"secret")
    res = anonymize_bytes(data, Options(targets=("face",)), engine=engine)
    assert isinstance(res, AnonymizeResult) and isinstance(res.report, Report)
    doc = res.report.to_json()
    text = json.dumps(doc)
    assert "GPS-FIX" not in text and "52.0" not in text and "secret" not in text and len(text) < 5000
    assert {"exif", "gps", "comment"} <= set(doc["metadata_removed"])
    assert set(doc["timings_ms"]) == {"decode", "detect", "mask", "encode"}
    assert doc["width"] == 512 and doc["format_in"] == doc["format_out"] == "jpeg"
    assert doc["hidden"] == doc["detections"] == {"face": 1} and doc["source"] == "engine"
    (region,) = doc["regions"]
    assert _iou(region["box"], FACE) > 0.8 and region["score"] > 0.8
    assert {k: v for k, v in region.items() if k not in ("box", "score")} == {
        "target": "face", "style": "blur", "shape": "ellipse", "fallback": None, "stage": "detect"}  # fmt: skip
    assert doc["models"] == engine.model_names(("face",)) and all("(" in m for m in doc["models"])
    # manual regions: reported exactly as given, and no models were used
    doc = anonymize_bytes(data, Options(), regions=[Detection("face", 0.9, FACE)]).report.to_json()
    assert doc["regions"] == [{"target": "face", "score": 0.9, "box": list(FACE), "style": "blur",
                               "shape": "ellipse", "fallback": None, "stage": "manual"}]  # fmt: skip
    assert doc["models"] == [] and doc["source"] == "regions" and "GPS-FIX" not in json.dumps(doc)


def test_anonymize_bytes_formats_quality_and_kept_fields(astronaut_rgb):
    ex = Image.Exif()
    ex[0x8298] = "(c) Town Hall"
    ex[0x010F] = "CameraMaker"
    data = _jpeg(astronaut_rgb, quality=70, exif=ex.tobytes())
    regions = [Detection("face", 0.9, FACE)]
    res = anonymize_bytes(data, Options(format="webp"), regions=regions)
    assert res.content_type == "image/webp" and res.format == "webp" and res.data[8:12] == b"WEBP"
    assert res.report.format_in == "jpeg" and res.report.format_out == "webp"
    res = anonymize_bytes(data, Options(keep_metadata=("copyright",)), regions=regions)
    exif = Image.open(io.BytesIO(res.data)).getexif()
    assert exif.get(0x8298) == "(c) Town Hall" and 0x010F not in exif
    assert res.report.metadata_kept == ["copyright"] and "exif" in res.report.metadata_removed
    assert abs(load_image(res.data).quality - 70) <= 2  # re-encoded at the input's quality
    assert abs(load_image(anonymize_bytes(data, Options(quality=40), regions=regions).data).quality - 40) <= 2
    rgba = np.dstack([astronaut_rgb, np.full((512, 512), 200, np.uint8)])
    res = anonymize_bytes(_png(rgba), Options(), regions=regions)
    out = Image.open(io.BytesIO(res.data))
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out)[..., 3], rgba[..., 3])
    assert not np.array_equal(np.asarray(out)[100:140, 200:250, :3], astronaut_rgb[100:140, 200:250])


def test_anonymize_file_is_atomic_and_protects_the_input(astronaut_rgb, tmp_path):
    from veil.detection.engine import get_engine

    eng = get_engine("fast")
    src = tmp_path / "photo.png"
    src.write_bytes(_png(astronaut_rgb))
    before = src.read_bytes()
    opts = Options(targets=("face",), preset="fast")
    with pytest.raises(OptionsError, match="in-place"):
        anonymize_file(src, src, opts, engine=eng)
    rep = anonymize_file(src, None, opts, engine=eng)  # dry run
    assert rep.format_out is None and rep.hidden == {"face": 1} and rep.preset == "fast"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]
    rep = anonymize_file(src, tmp_path / "out.png", opts, engine=eng)
    assert src.read_bytes() == before and rep.format_out == "png"
    written = load_image(tmp_path / "out.png").rgb
    assert _changed(written, astronaut_rgb, FACE, inset=20, by=15) and np.array_equal(written[300:], astronaut_rgb[300:])
    anonymize_file(src, src, opts, engine=eng, overwrite_input=True)
    assert src.read_bytes() != before and _changed(load_image(src).rgb, astronaut_rgb, FACE, inset=20, by=15)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "photo.png"]


# -- with the real detection engine ----------------------------------------------------------
@pytest.fixture(scope="module")
def lbp():
    from skimage import data
    from skimage.feature import Cascade

    cascade = Cascade(data.lbp_frontal_face_cascade_filename())

    def faces(rgb):
        found = cascade.detect_multi_scale(img=rgb, scale_factor=1.1, step_ratio=1, min_size=(40, 40), max_size=(400, 400), min_neighbor_number=2)
        return [(f["c"], f["r"], f["c"] + f["width"], f["r"] + f["height"]) for f in found]

    return faces


@pytest.fixture(scope="module")
def real_faces(engine, astronaut_rgb, hopper_rgb):
    out = {}
    for name, rgb in (("astronaut", astronaut_rgb), ("hopper", hopper_rgb)):
        faces = [d for d in engine.detect(rgb, ("face",)) if d.target == "face"]
        assert len(faces) == 1 and faces[0].score > 0.5, name
        out[name] = (rgb, faces)
    return out


def flat_patch(rgb, faces):
    """The faces' regions filled with each face's mean colour: the same head around it,
    no information about the face. The baseline a detector's answer is judged against."""
    out = rgb
    for f in faces:
        x1, y1, x2, y2 = (int(v) for v in f.box)
        mean = tuple(int(c) for c in rgb[y1:y2, x1:x2].reshape(-1, 3).mean(axis=0))
        out, _ = mask_detections(out, [f], Options(style="fill", color=mean))
    return out


def face_score(engine, rgb, face) -> float:
    """The best score the engine gives a box that finds ``face`` again by ``veil eval``'s
    rules: it covers at least half of the face or matches it (IoU >= 0.3); 0 if none. A box
    on a corner of the region (int8 YOLO11m: 0.24 on a patch of deconvolution's ringing in
    the upper third of Grace Hopper's mask, where the float model gives 0) is not the face."""
    ref = np.array(face.box, np.float32)
    return max([d.score for d in engine.detect(rgb, ("face",))
                if d.target == "face" and _finds(np.array(d.box, np.float32), ref)], default=0.0)  # fmt: skip


def _finds(box: np.ndarray, ref: np.ndarray) -> bool:
    return covered_fraction(ref, box[None]) >= COVER or _iou(box, ref) >= MATCH_IOU


#: known limit (see the README): pixelate at strength 0 (4.5 blocks) leaves the two 50 px
#: faces of bus.jpg a face to YOLO11m (0.59, 0.68; the float model 0.61, 0.71): the mean is
#: 0.28 against the patches' 0.17. Fewer blocks (3-4) pass this but make deconvolution
#: correlate with the face's detail (r 0.16-0.23 against a chance level of ~0.13).
_PIXELATE_SMALL_FACES = "pixelate at strength 0 leaves small faces a face to YOLO11m (known limit, see the README)"


@pytest.mark.parametrize("style", ["blur", "pixelate", "fill"])
def test_strength_zero_faces_are_not_found_again(style, engine, real_faces, photos, lbp):
    """Irreversibility: at the weakest strength, the detectors see no more of the faces
    than of flat patches of their mean colours.

    YOLO11m (the strongest face detector here, trained on WIDER FACE and its many blurred
    and occluded faces) also fires on a head whose face is that information-free patch
    (astronaut 0.59, Grace Hopper 0.21, one of zidane's 0.24), from the hair and head
    outline around it, and its answer on one head moves by up to ~0.3 with any change
    (the float model scores those patches 0.27, 0.00 and 0.22). So over the six faces of
    four real photos, its mean score on the hidden faces may not exceed its mean on the
    patches by more than 0.1, nor any face its own patch by more than 0.3 (unmasked, the
    faces score 0.66-0.87: 0.81 on average; two of the photos, bus and zidane, are the ones
    the int8 quantizer calibrates on). The LBP cascade must no longer find a face it found
    before (its best match to the face; it also fires on smaller parts of faces and on the
    background). The masks' dithering is seeded.
    """
    heads = [real_faces["astronaut"], real_faces["hopper"]]
    for name in ("zidane", "bus"):
        rgb = load_image(photos[name]).rgb
        heads.append((rgb, [d for d in engine.detect(rgb, ("face",)) if d.target == "face"]))
    masked, flat, outs = [], [], []
    for rgb, faces in heads:
        assert faces and min(f.score for f in faces) > 0.5
        out, rep = anonymize(load_image(_png(rgb)), Options(style=style, strength=0), regions=faces, rng=np.random.default_rng(0))
        assert len(rep.regions) == len(faces)
        outs.append(out)
        patch = flat_patch(rgb, faces)
        masked += [face_score(engine, out, f) for f in faces]
        flat += [face_score(engine, patch, f) for f in faces]
    assert len(masked) == 6
    # on average no more than the patches, and no single face clearly re-found either
    ok = np.mean(masked) <= np.mean(flat) + 0.1 and all(m <= f + 0.3 for m, f in zip(masked, flat, strict=True))
    if style == "pixelate":
        assert not ok, "pixelate now passes: drop its known-limit note here and in the README"
    else:
        assert ok, (masked, flat)
    for name, (rgb, faces), out in zip(("astronaut", "hopper"), heads, outs):  # the first two heads
        seen = max(lbp(rgb), key=lambda b: _iou(b, faces[0].box))
        assert _iou(seen, faces[0].box) > 0.5, "the cascade does see the original"
        if style != "pixelate":  # a 4-block mosaic is a "tiny face" to a 24x24 cascade window
            assert not [b for b in lbp(out) if _iou(b, seen) >= 0.5], name
    if style == "pixelate":
        pytest.xfail(_PIXELATE_SMALL_FACES)


def test_end_to_end_rotated_jpeg_is_upright_with_upright_boxes(engine, real_faces):
    rgb, faces = real_faces["astronaut"]
    stored = Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90)
    ex = Image.Exif()
    ex[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=ex.tobytes())
    res = anonymize_bytes(buf.getvalue(), Options(targets=("face",)), engine=engine)
    out = Image.open(io.BytesIO(res.data))
    assert out.size == (512, 512) and out.getexif().get(0x0112) in (None, 1)
    assert res.report.orientation_applied == 6
    face = [r for r in res.report.regions if r.target == "face"]
    assert len(face) == 1 and _iou(face[0].box, faces[0].box) > 0.6
    x1, y1, x2, y2 = (int(v) for v in faces[0].box)
    core = np.asarray(out)[y1 + 20 : y2 - 20, x1 + 20 : x2 - 20].astype(float)
    assert np.abs(core - rgb[y1 + 20 : y2 - 20, x1 + 20 : x2 - 20]).mean() > 10
    assert res.report.models  # names and versions from the engine


def test_default_targets_are_faces_and_plates():
    """People are hidden on request only: a person box blurs most of a portrait."""
    assert Options().targets == ("face", "plate") == Options.from_mapping({}).targets
    assert Options.from_mapping({"targets": ["face", "person", "plate"]}).targets == ("face", "person", "plate")
