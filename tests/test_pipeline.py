"""The core pipeline: detection -> masking -> verify -> encoding, and its report."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from veil.detection.types import Detection
from veil.errors import OptionsError
from veil.imageio import load_image
from veil.pipeline.core import AnonymizeResult, Report, anonymize, anonymize_bytes, anonymize_file
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


# -- logic, with a stand-in engine ------------------------------------------------------------
def test_targets_filter_and_heads_follow_faces(astronaut_rgb, fake_engine):
    dets = [Detection("face", 0.9, FACE), Detection("person", 0.8, (10, 130, 360, 512)),
            Detection("plate", 0.5, (240, 440, 260, 476)), Detection("head", 0.6, (400, 10, 450, 60))]  # fmt: skip
    img = load_image(_png(astronaut_rgb))
    eng = fake_engine(dets)
    out, rep = anonymize(img, Options(targets=("face",)), engine=eng)
    assert eng.calls == [("face",)]
    assert rep.detections == {"face": 1, "head": 1} and [r.target for r in rep.regions] == ["face", "head"]
    assert rep.models == ["fake-face (test)"] and rep.source == "engine" and rep.verify_found is None
    _, rep = anonymize(img, Options(targets=("face",), hide_heads=False), engine=fake_engine(dets))
    assert rep.detections == {"face": 1}
    _, rep = anonymize(img, Options(targets=("plate",)), engine=fake_engine(dets))
    assert rep.detections == {"plate": 1}
    assert not np.array_equal(out, astronaut_rgb)


def test_explicit_regions_are_rendered_without_detection(astronaut_rgb):
    class Refuses:
        def detect(self, *a, **k):
            raise AssertionError("regions given: nothing may be detected")

    img = load_image(_png(astronaut_rgb))
    out, rep = anonymize(img, Options(verify=True), regions=[Detection("face", 1.0, (270, 176, 180, 66))], engine=Refuses())
    assert rep.source == "regions" and rep.verify_found is None and rep.models == []
    assert [(r.target, r.stage, r.box) for r in rep.regions] == [("face", "manual", FACE)]
    assert not np.array_equal(out[100:140, 200:250], astronaut_rgb[100:140, 200:250])
    assert np.array_equal(out[300:, :], astronaut_rgb[300:, :])
    with pytest.raises(OptionsError, match="unknown target"):
        anonymize(img, Options(), regions=[Detection("cat", 1.0, FACE)])


def test_verify_pass_hides_what_is_still_found(astronaut_rgb, fake_engine):
    img = load_image(_png(astronaut_rgb))
    missed = Detection("face", 0.7, (380, 20, 440, 90))
    eng = fake_engine([Detection("face", 0.9, FACE)], [missed, Detection("plate", 0.9, (0, 0, 9, 9))])
    out, rep = anonymize(img, Options(verify=True), engine=eng)
    assert eng.calls[1] == ("face",) and rep.verify_found == 1
    assert [r.stage for r in rep.regions] == ["detect", "verify"]
    assert not np.array_equal(out[40:70, 395:425], astronaut_rgb[40:70, 395:425])
    eng = fake_engine([Detection("face", 0.9, FACE)])
    _, rep = anonymize(img, Options(preset="thorough"), engine=eng)  # verify defaults on here
    assert len(eng.calls) == 2 and rep.verify_found == 1


def test_report_json_has_no_pixels_or_gps(astronaut_rgb, fake_engine):
    ex = Image.Exif()
    ex[0x8825] = {1: "N", 2: (52.0, 22.0, 12.5), 27: b"ASCII\x00\x00\x00GPS-FIX"}
    data = _jpeg(astronaut_rgb, exif=ex.tobytes(), comment=b"secret")
    res = anonymize_bytes(data, Options(), engine=fake_engine([Detection("face", 0.9, FACE)]))
    assert isinstance(res, AnonymizeResult) and isinstance(res.report, Report)
    doc = res.report.to_json()
    text = json.dumps(doc)
    assert "GPS-FIX" not in text and "52.0" not in text and "secret" not in text and len(text) < 5000
    assert {"exif", "gps", "comment"} <= set(doc["metadata_removed"])
    assert set(doc["timings_ms"]) == {"decode", "detect", "mask", "encode"}
    assert doc["width"] == 512 and doc["format_in"] == doc["format_out"] == "jpeg"
    assert doc["regions"][0] == {"target": "face", "score": 0.9, "box": list(FACE), "style": "blur",
                                 "shape": "ellipse", "fallback": None, "stage": "detect"}  # fmt: skip

    class NoNames:
        def detect(self, rgb, targets=()):
            return []

    assert anonymize_bytes(data, Options(), engine=NoNames()).report.models == []


def test_anonymize_bytes_formats_quality_and_kept_fields(astronaut_rgb, fake_engine):
    ex = Image.Exif()
    ex[0x8298] = "(c) Town Hall"
    ex[0x010F] = "CameraMaker"
    data = _jpeg(astronaut_rgb, quality=70, exif=ex.tobytes())
    eng = fake_engine([Detection("face", 0.9, FACE)])
    res = anonymize_bytes(data, Options(format="webp"), engine=eng)
    assert res.content_type == "image/webp" and res.format == "webp" and res.data[8:12] == b"WEBP"
    res = anonymize_bytes(data, Options(keep_metadata=("copyright",)), engine=eng)
    exif = Image.open(io.BytesIO(res.data)).getexif()
    assert exif.get(0x8298) == "(c) Town Hall" and 0x010F not in exif
    assert res.report.metadata_kept == ["copyright"] and "exif" in res.report.metadata_removed
    assert abs(load_image(res.data).quality - 70) <= 2  # re-encoded at the input's quality
    rgba = np.dstack([astronaut_rgb, np.full((512, 512), 200, np.uint8)])
    res = anonymize_bytes(_png(rgba), Options(), engine=eng)
    assert Image.open(io.BytesIO(res.data)).mode == "RGBA"


def test_anonymize_file_is_atomic_and_protects_the_input(astronaut_rgb, fake_engine, tmp_path):
    src = tmp_path / "photo.png"
    src.write_bytes(_png(astronaut_rgb))
    before = src.read_bytes()
    eng = fake_engine([Detection("face", 0.9, FACE)])
    with pytest.raises(OptionsError, match="in-place"):
        anonymize_file(src, src, Options(), engine=eng)
    rep = anonymize_file(src, None, Options(), engine=eng)  # dry run
    assert rep.format_out is None and sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]
    anonymize_file(src, tmp_path / "out.png", Options(), engine=eng)
    assert src.read_bytes() == before
    anonymize_file(src, src, Options(), engine=eng, overwrite_input=True)
    assert src.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "photo.png"]


# -- with the real detection engine ----------------------------------------------------------
@pytest.fixture(scope="session")
def face_engine():
    """The default engine; only the face models load (lazily, once per process)."""
    from veil.detection.engine import get_engine

    return get_engine("balanced")


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
def real_faces(face_engine, astronaut_rgb, hopper_rgb):
    out = {}
    for name, rgb in (("astronaut", astronaut_rgb), ("hopper", hopper_rgb)):
        faces = [d for d in face_engine.detect(rgb, ("face",)) if d.target == "face"]
        assert len(faces) == 1 and faces[0].score > 0.8, name
        out[name] = (rgb, faces)
    return out


@pytest.mark.parametrize("style", ["blur", "pixelate", "fill"])
def test_strength_zero_faces_are_not_found_again(style, face_engine, real_faces, lbp):
    """Irreversibility: at the weakest strength, the detectors no longer see the face.

    The engine is recall-tuned (it reports candidates from ~0.3); a hidden head can still
    draw a weak "head-shaped blob" response, so "found" means a confident detection (the
    originals score > 0.9). The classic LBP cascade must find nothing at all.
    """
    names = ["astronaut", "hopper"] if style != "fill" else ["astronaut"]
    for name in names:
        rgb, faces = real_faces[name]
        img = load_image(_png(rgb))
        out, rep = anonymize(img, Options(style=style, strength=0), regions=faces)
        assert len(rep.regions) == 1
        again = [d for d in face_engine.detect(out, ("face",)) if d.target == "face" and _near(d.box, faces[0].box)]
        assert not [d for d in again if d.score >= 0.6], (name, [(d.score, d.source) for d in again])
        if style != "pixelate":  # a 4-block mosaic is a "tiny face" to a 24x24 cascade window
            assert not [b for b in lbp(out) if _near(b, faces[0].box)], name
        assert [b for b in lbp(rgb) if _near(b, faces[0].box)], "the cascade does see the original"


def test_end_to_end_rotated_jpeg_is_upright_with_upright_boxes(face_engine, real_faces):
    rgb, faces = real_faces["astronaut"]
    stored = Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90)
    ex = Image.Exif()
    ex[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=ex.tobytes())
    res = anonymize_bytes(buf.getvalue(), Options(targets=("face",)), engine=face_engine)
    out = Image.open(io.BytesIO(res.data))
    assert out.size == (512, 512) and out.getexif().get(0x0112) in (None, 1)
    assert res.report.orientation_applied == 6
    face = [r for r in res.report.regions if r.target == "face"]
    assert len(face) == 1 and _iou(face[0].box, faces[0].box) > 0.6
    x1, y1, x2, y2 = (int(v) for v in faces[0].box)
    core = np.asarray(out)[y1 + 20 : y2 - 20, x1 + 20 : x2 - 20].astype(float)
    assert np.abs(core - rgb[y1 + 20 : y2 - 20, x1 + 20 : x2 - 20]).mean() > 10
    assert res.report.models  # names and versions from the engine
