"""``veil anonymize``: batches, output layout, safety of the inputs, errors and exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from conftest import fresh_python

from veil.cli.anonymize import anonymize

FACE = (180.0, 66.0, 270.0, 176.0)  # the astronaut's face
HOPPER_FACE = (89.5, 59.5, 177.0, 166.0)  # Grace Hopper's, in the half-size copy
runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command()(anonymize)
    return app


def run(*args: str):
    return runner.invoke(_app(), [str(a) for a in args])


#: Detection quality does not matter for the CLI's own logic: the cheap preset, faces only.
FAST = ("--preset", "fast", "-t", "face")


@pytest.fixture
def tree(tmp_path, astronaut_rgb, hopper_rgb) -> Path:
    """Two real photos (the astronaut, and Grace Hopper at half size), a broken file, a note."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    ex = Image.Exif()
    ex[0x8298] = "(c) City"
    ex[0x8825] = {1: "N", 2: (52.0, 22.0, 12.5)}
    Image.fromarray(astronaut_rgb).save(src / "a.jpg", quality=90, exif=ex.tobytes())
    Image.fromarray(hopper_rgb).resize((256, 300), Image.Resampling.LANCZOS).save(src / "sub" / "b.png")
    (src / "sub" / "bad.jpg").write_text("not an image at all")
    (src / "notes.txt").write_text("ignored: not an image name")
    return src


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _digest(root: Path) -> dict[str, bytes]:
    return {p: (root / p).read_bytes() for p in _files(root)}


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(float)


def _diff(a: np.ndarray, b: np.ndarray, box) -> float:
    x1, y1, x2, y2 = box
    return float(np.abs(a[y1:y2, x1:x2] - b[y1:y2, x1:x2]).mean())


def _near(box, ref) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return ref[0] < cx < ref[2] and ref[1] < cy < ref[3]


def test_folder_is_mirrored_bad_files_skipped_and_reported(tree, tmp_path):
    before = _digest(tree)
    res = run(tree, "-o", tmp_path / "out", "--report", tmp_path / "run.json", *FAST)
    assert res.exit_code == 1, res.output
    assert _files(tmp_path / "out") == ["a.jpg", "sub/b.png"]  # no temp files, same names
    assert _digest(tree) == before  # inputs untouched
    assert "bad.jpg" in res.output and "not a supported image" in res.output
    assert "2 image(s) anonymized, 1 failed" in res.output and "2 faces" in res.output
    assert "gps (1)" in res.output and "Traceback" not in res.output
    doc = json.loads((tmp_path / "run.json").read_text())
    assert doc["summary"]["done"] == 2 and doc["summary"]["failed"] == 1
    assert doc["summary"]["hidden"] == {"face": 2} and doc["options"]["style"] == "blur"
    assert doc["options"]["preset"] == "fast" and doc["options"]["targets"] == ["face"]
    items = {i["path"].rsplit("/", 1)[-1]: i for i in doc["images"]}
    assert {k: i["ok"] for k, i in items.items()} == {"a.jpg": True, "b.png": True, "bad.jpg": False}
    assert _near(items["a.jpg"]["report"]["regions"][0]["box"], FACE)
    assert _near(items["b.png"]["report"]["regions"][0]["box"], HOPPER_FACE)
    assert items["a.jpg"]["report"]["models"] and "error" in items["bad.jpg"]
    out = Image.open(tmp_path / "out" / "a.jpg")
    assert not out.getexif() and out.size == (512, 512)
    # the faces are hidden, the rest of each photo is the photo
    a, a0 = _rgb(tmp_path / "out" / "a.jpg"), _rgb(tree / "a.jpg")
    assert _diff(a, a0, (200, 90, 250, 150)) > 10 and _diff(a, a0, (0, 300, 512, 512)) < 3
    b, b0 = _rgb(tmp_path / "out" / "sub" / "b.png"), _rgb(tree / "sub" / "b.png")
    assert _diff(b, b0, (110, 80, 150, 140)) > 10 and _diff(b, b0, (0, 200, 256, 300)) < 1


def test_default_names_format_and_quality(tree):
    res = run(tree / "a.jpg", *FAST)
    assert res.exit_code == 0, res.output
    assert (tree / "a.anonymized.jpg").exists() and "1 faces" in res.output
    assert Image.open(tree / "a.anonymized.jpg").format == "JPEG"
    res = run(tree / "a.jpg", "--format", "png", *FAST)
    assert res.exit_code == 0 and Image.open(tree / "a.anonymized.png").format == "PNG"
    res = run(tree / "a.jpg", "-o", tree.parent / "q", "--quality", "40", *FAST)
    assert res.exit_code == 0, res.output
    assert (tree.parent / "q" / "a.jpg").stat().st_size < 0.7 * (tree / "a.anonymized.jpg").stat().st_size
    # a second run over the folder does not pick up earlier outputs
    res = run(tree, "--dry-run", *FAST)
    assert "anonymized" not in res.output and "would hide" in res.output
    assert "2 image(s) checked, 1 failed" in res.output


def test_in_place_replaces_atomically(tree):
    before = (tree / "a.jpg").read_bytes()
    original = _rgb(tree / "a.jpg")
    res = run(tree / "a.jpg", "--in-place", *FAST)
    assert res.exit_code == 0, res.output
    assert (tree / "a.jpg").read_bytes() != before
    assert _diff(_rgb(tree / "a.jpg"), original, (200, 90, 250, 150)) > 10
    assert _files(tree) == ["a.jpg", "notes.txt", "sub/b.png", "sub/bad.jpg"]


def test_dry_run_writes_nothing(tree, tmp_path):
    """The default targets (faces and plates), with the cheap preset: the photos hold faces
    and people, and people are hidden only on request."""
    before = _digest(tree)
    res = run(tree, "-o", tmp_path / "out", "--dry-run", "--preset", "fast")
    assert res.exit_code == 1  # the bad file still counts
    assert not (tmp_path / "out").exists() and _digest(tree) == before
    assert "would hide face" in res.output and "blur/ellipse" in res.output and "would remove metadata" in res.output
    assert "would hide person" not in res.output
    assert "2 image(s) checked, 1 failed" in res.output
    res = run(tree, "-o", tmp_path / "out", "--dry-run", "--preset", "fast", "--targets", "face,person,plate")
    assert "would hide person" in res.output and "blur/box" in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--strength", "200"], "strength must be"),
        (["--style", "swirl"], "style must be one of"),
        (["--targets", "face,cats"], "unknown target"),
        (["--color", "red"], "color must look like"),
        (["--keep-metadata", "gps"], "keep_metadata must be one of"),
        (["--preset", "turbo"], "preset must be one of"),
        (["--in-place", "-o", "x"], "not both"),
        (["--in-place", "--format", "png"], "cannot change the format"),
    ],
)
def test_bad_options_exit_2_without_traceback(args, message, tree):
    before = _digest(tree)
    res = run(tree / "a.jpg", *args)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert _digest(tree) == before


def test_missing_path_and_self_overwrite_are_refused(tree):
    res = run(tree / "nope.jpg")
    assert res.exit_code == 2 and "no such file" in res.output
    res = run(tree, "-o", tree)
    assert res.exit_code == 2 and "overwritten" in res.output
    assert _files(tree) == ["a.jpg", "notes.txt", "sub/b.png", "sub/bad.jpg"]


def test_config_file_and_per_target_flags(tree, tmp_path):
    cfg = tmp_path / "newsroom.toml"
    cfg.write_text('[veil]\nstyle = "fill"\ncolor = "#ff0000"\nfeather = 0.0\nkeep_metadata = ["copyright"]\n')
    res = run(tree / "a.jpg", "-o", tmp_path / "out", "--config", cfg, *FAST)
    assert res.exit_code == 0, res.output
    out = Image.open(tmp_path / "out" / "a.jpg")
    px = np.asarray(out)[120, 225].astype(int)
    assert px[0] > 200 and px[1] < 60 and px[2] < 60
    assert out.getexif().get(0x8298) == "(c) City" and not out.getexif().get_ifd(0x8825)
    res = run(tree / "a.jpg", "-o", tmp_path / "out2", "--config", cfg, "--face-style", "pixelate", "--report", tmp_path / "r.json", *FAST)
    assert res.exit_code == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["images"][0]["report"]["regions"][0]["style"] == "pixelate" and doc["options"]["color"] == "#ff0000"
    px = np.asarray(Image.open(tmp_path / "out2" / "a.jpg"))[120, 225].astype(int)
    assert not (px[0] > 200 and px[1] < 60 and px[2] < 60)  # the flag overrides the file's fill
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
    assert rep["hidden"] == {"face": 1} and rep["models"] and rep["preset"] == "balanced"
    assert _near(rep["regions"][0]["box"], HOPPER_FACE)


def test_jobs_use_worker_processes(tree, tmp_path):
    res = run(tree / "a.jpg", tree / "sub" / "b.png", "-o", tmp_path / "out", "--jobs", "2", "-t", "plate", "--preset", "fast")
    assert res.exit_code == 0, res.output
    assert _files(tmp_path / "out") == ["a.jpg", "b.png"]


def test_hide_heads_flag_reaches_the_pipeline(tmp_path, photos):
    """zidane.jpg: one man's face is turned away, so his head is hidden from his pose
    (heads come from the person pass: people must be among the targets)."""
    shutil.copy(photos["zidane"], tmp_path / "z.jpg")
    heads = {}
    for flag in ("--hide-heads", "--no-hide-heads"):
        rep = tmp_path / f"{flag}.json"
        res = run(tmp_path / "z.jpg", "--dry-run", "--report", rep, flag, "--targets", "face,person,plate")
        assert res.exit_code == 0, res.output
        (item,) = json.loads(rep.read_text())["images"]
        heads[flag] = [r for r in item["report"]["regions"] if r["target"] == "head"]
    assert heads["--hide-heads"] and not heads["--no-hide-heads"]


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_bad_jobs_is_a_user_error(tree, tmp_path, value):
    res = run(tree / "a.jpg", "-o", tmp_path / "out", "--jobs", value, *FAST)
    assert res.exit_code == 2 and "--jobs must be a positive number or auto" in res.output
    assert not (tmp_path / "out").exists()


def test_auto_jobs_one_worker_per_core_within_memory(monkeypatch):
    import veil.cli.anonymize as cli

    monkeypatch.setattr(cli, "_cores", lambda: 4)
    monkeypatch.setattr(cli, "available_memory", lambda: 16e9)
    assert cli.auto_jobs(1) == cli.auto_jobs(7) == 1  # a worker's start-up costs more than it saves
    assert cli.auto_jobs(8) == 2 and cli.auto_jobs(10_000) == 4
    monkeypatch.setattr(cli, "available_memory", lambda: 2.5e9)  # room for two workers
    assert cli.auto_jobs(10_000) == 2
    monkeypatch.setattr(cli, "available_memory", lambda: 0.3e9)
    assert cli.auto_jobs(10_000) == 1
    monkeypatch.setattr(cli, "_cores", lambda: 64)
    monkeypatch.setattr(cli, "available_memory", lambda: 0)  # unknown: cores decide, capped
    assert cli.auto_jobs(10_000) == 8


def test_available_memory_is_read_from_the_system():
    from veil.cli.anonymize import available_memory

    import sys

    if sys.platform.startswith("linux"):
        assert 50e6 < available_memory() < 1e15


def test_batch_workers_and_the_command_start_light():
    """A batch's spawned worker first re-imports the ``veil`` script as ``__mp_main__``, then
    ``veil.cli.batch_item`` for its task: neither may pull in the command line (typer,
    rich, every command's module: ~0.3 s of each worker's start-up). The command line
    itself starts without the models' runtime, the video stack and the image codecs."""
    import sys

    script = Path(sys.executable).with_name("veil")
    assert script.is_file(), "the veil command is installed with the package"
    worker = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='__mp_main__'); import veil.cli.batch_item; "
              "print(sorted(m for m in ('typer', 'rich', 'veil.cli.main', 'av', 'onnxruntime') if m in sys.modules))")  # fmt: skip
    out = fresh_python(worker, str(script))
    assert out.stdout.strip() == "[]", out.stdout
    command = ("import sys, veil.cli.main; "
               "print(sorted(m for m in ('av', 'onnxruntime', 'PIL.Image', 'cv2') if m in sys.modules))")  # fmt: skip
    out = fresh_python(command)
    assert out.stdout.strip() == "[]", out.stdout
