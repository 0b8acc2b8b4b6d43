"""``veil anonymize``: batches, output layout, safety of the inputs, errors and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from veil.cli.anonymize import anonymize
from veil.detection.types import Detection

FACE = (180.0, 66.0, 270.0, 176.0)
runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command()(anonymize)
    return app


def run(*args: str):
    return runner.invoke(_app(), [str(a) for a in args])


@pytest.fixture
def fake(monkeypatch, fake_engine):
    """Every engine is a stand-in that finds the astronaut's face (CLI logic only)."""
    eng = fake_engine([Detection("face", 0.9, FACE)])
    monkeypatch.setattr("veil.detection.engine.get_engine", lambda preset="balanced": eng)
    return eng


@pytest.fixture
def tree(tmp_path, astronaut_rgb) -> Path:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    ex = Image.Exif()
    ex[0x8298] = "(c) City"
    ex[0x8825] = {1: "N", 2: (52.0, 22.0, 12.5)}
    Image.fromarray(astronaut_rgb).save(src / "a.jpg", quality=90, exif=ex.tobytes())
    Image.fromarray(astronaut_rgb).save(src / "sub" / "b.png")
    (src / "sub" / "bad.jpg").write_text("not an image at all")
    (src / "notes.txt").write_text("ignored: not an image name")
    return src


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _digest(root: Path) -> dict[str, bytes]:
    return {p: (root / p).read_bytes() for p in _files(root)}


def test_folder_is_mirrored_bad_files_skipped_and_reported(fake, tree, tmp_path):
    before = _digest(tree)
    res = run(tree, "-o", tmp_path / "out", "--report", tmp_path / "run.json")
    assert res.exit_code == 1, res.output
    assert _files(tmp_path / "out") == ["a.jpg", "sub/b.png"]  # no temp files, same names
    assert _digest(tree) == before  # inputs untouched
    assert "bad.jpg" in res.output and "not a supported image" in res.output
    assert "2 image(s) anonymized, 1 failed" in res.output and "2 faces" in res.output
    assert "gps (1)" in res.output and "Traceback" not in res.output
    doc = json.loads((tmp_path / "run.json").read_text())
    assert doc["summary"]["done"] == 2 and doc["summary"]["failed"] == 1
    assert doc["summary"]["hidden"] == {"face": 2} and doc["options"]["style"] == "blur"
    assert {i["path"].rsplit("/", 1)[-1]: i["ok"] for i in doc["images"]} == {"a.jpg": True, "b.png": True, "bad.jpg": False}
    out = Image.open(tmp_path / "out" / "a.jpg")
    assert not out.getexif() and out.size == (512, 512)


def test_default_names_format_and_quality(fake, tree):
    res = run(tree / "a.jpg")
    assert res.exit_code == 0, res.output
    assert (tree / "a.anonymized.jpg").exists()
    res = run(tree / "a.jpg", "--format", "png")
    assert res.exit_code == 0 and Image.open(tree / "a.anonymized.png").format == "PNG"
    # a second run over the folder does not pick up earlier outputs
    res = run(tree, "--dry-run")
    assert "anonymized.jpg" not in res.output and "would hide" in res.output


def test_in_place_replaces_atomically(fake, tree):
    before = (tree / "a.jpg").read_bytes()
    res = run(tree / "a.jpg", "--in-place")
    assert res.exit_code == 0, res.output
    assert (tree / "a.jpg").read_bytes() != before
    assert _files(tree) == ["a.jpg", "notes.txt", "sub/b.png", "sub/bad.jpg"]


def test_dry_run_writes_nothing(fake, tree, tmp_path):
    before = _digest(tree)
    res = run(tree, "-o", tmp_path / "out", "--dry-run")
    assert res.exit_code == 1  # the bad file still counts
    assert not (tmp_path / "out").exists() and _digest(tree) == before
    assert "would hide face" in res.output and "blur/ellipse" in res.output and "would remove metadata" in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--strength", "200"], "strength must be"),
        (["--style", "swirl"], "style must be one of"),
        (["--targets", "face,cats"], "unknown target"),
        (["--color", "red"], "color must look like"),
        (["--keep-metadata", "gps"], "keep_metadata must be one of"),
        (["--in-place", "-o", "x"], "not both"),
        (["--in-place", "--format", "png"], "cannot change the format"),
    ],
)
def test_bad_options_exit_2_without_traceback(args, message, fake, tree):
    res = run(tree / "a.jpg", *args)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output


def test_missing_path_and_self_overwrite_are_refused(fake, tree):
    res = run(tree / "nope.jpg")
    assert res.exit_code == 2 and "no such file" in res.output
    res = run(tree, "-o", tree)
    assert res.exit_code == 2 and "overwritten" in res.output


def test_config_file_and_per_target_flags(fake, tree, tmp_path, astronaut_rgb):
    cfg = tmp_path / "newsroom.toml"
    cfg.write_text('[veil]\nstyle = "fill"\ncolor = "#ff0000"\nfeather = 0.0\nkeep_metadata = ["copyright"]\n')
    res = run(tree / "a.jpg", "-o", tmp_path / "out", "--config", cfg)
    assert res.exit_code == 0, res.output
    out = Image.open(tmp_path / "out" / "a.jpg")
    px = np.asarray(out)[120, 225].astype(int)
    assert px[0] > 200 and px[1] < 60 and px[2] < 60
    assert out.getexif().get(0x8298) == "(c) City" and not out.getexif().get_ifd(0x8825)
    res = run(tree / "a.jpg", "-o", tmp_path / "out2", "--config", cfg, "--face-style", "pixelate", "--report", tmp_path / "r.json")
    assert res.exit_code == 0
    assert json.loads((tmp_path / "r.json").read_text())["images"][0]["report"]["regions"][0]["style"] == "pixelate"
    cfg.write_text('style = "fill"\nswirl = 3\n')
    res = run(tree / "a.jpg", "--config", cfg)
    assert res.exit_code == 2 and "unknown option 'swirl'" in res.output


def test_registered_in_the_veil_command():
    from veil.cli.main import app

    res = runner.invoke(app, ["anonymize", "--help"])
    assert res.exit_code == 0 and "--keep-metadata" in res.output


# -- with the real engine ------------------------------------------------------------------------
def test_real_engine_end_to_end(tree, tmp_path):
    res = run(tree / "sub" / "b.png", "-o", tmp_path / "out", "-t", "face", "--report", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "r.json").read_text())["images"][0]["report"]
    assert rep["hidden"] == {"face": 1} and rep["models"]


def test_jobs_use_worker_processes(tree, tmp_path):
    res = run(tree / "a.jpg", tree / "sub" / "b.png", "-o", tmp_path / "out", "--jobs", "2", "-t", "plate", "--preset", "fast")
    assert res.exit_code == 0, res.output
    assert _files(tmp_path / "out") == ["a.jpg", "b.png"]
