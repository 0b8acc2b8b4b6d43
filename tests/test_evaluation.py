"""The accuracy metric and ``veil eval`` on a small labelled set made from real photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from veil.cli.main import app
from veil.evaluation.metric import TargetScore, covered_fraction


def test_covered_fraction_uses_the_union_of_boxes():
    label = np.array([0, 0, 100, 100], dtype=np.float32)
    assert covered_fraction(label, np.zeros((0, 4))) == 0
    halves = np.array([[0, 0, 50, 100], [50, 0, 100, 100]], dtype=np.float32)
    assert covered_fraction(label, halves) > 0.99  # neither box alone covers it
    assert abs(covered_fraction(label, np.array([[0, 0, 40, 100]], dtype=np.float32)) - 0.4) < 0.02


def test_target_score_buckets_and_precision():
    s = TargetScore()
    labels = np.array([[0, 0, 10, 10], [100, 100, 140, 150]], dtype=np.float32)
    preds = np.array([[100, 100, 140, 150], [300, 300, 320, 320]], dtype=np.float32)
    s.add(labels, np.zeros((0, 4)), preds)
    j = s.to_json()
    assert j["recall"] == 0.5 and j["recall_by_height"]["<16"] == 0 and j["recall_by_height"]["32-64"] == 1
    assert j["precision"] == 0.5 and j["boxes_per_image"] == 2


def test_veil_eval_on_labelled_photos(tmp_path: Path, photos, engine):
    (tmp_path / "images").mkdir()
    shutil.copy(photos["astronaut"], tmp_path / "images" / "a.jpg")
    shutil.copy(photos["bus"], tmp_path / "images" / "b.jpg")
    labels = [
        {"image": "images/a.jpg", "width": 512, "height": 512, "boxes": [{"cls": "face", "x1": 165, "y1": 60, "x2": 260, "y2": 180}]},
        {"image": "images/b.jpg", "width": 810, "height": 1080, "boxes": []},
    ]
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "labels.json"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    face = data["sets"][str(tmp_path / "labels.json")]["targets"]["face"]
    assert face["labelled"] == 1 and face["recall"] == 1.0
    # two sets are also scored pooled
    (tmp_path / "again.json").write_text(json.dumps(labels))
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "labels.json"), str(tmp_path / "again.json"), "--json"])
    pooled = json.loads(res.output)["sets"]["all"]["targets"]["face"]
    assert pooled["labelled"] == 2 and pooled["recall"] == 1.0
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "labels.json")])
    assert res.exit_code == 0 and "recall" in res.output


def test_veil_eval_missing_labels_is_clean(tmp_path: Path):
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "nope.json")])
    assert res.exit_code == 1 and "cannot read labels" in res.output
