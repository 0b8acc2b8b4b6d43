"""``veil anonymize`` killed with ``kill -9``: its workers die with it, the next run removes
its temporary files, skips the outputs it finished and completes the rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from veil.cli.resume import Manifest, file_sha256, remove_stale_temporaries
from veil.pipeline.options import Options

N_PHOTOS = 24
CLI = [sys.executable, "-c", "from veil.cli.main import app; app()", "anonymize"]


def _make_photos(folder: Path, photos: dict[str, Path], n: int = N_PHOTOS) -> list[Path]:
    """``n`` different real photos (the sample photos at several sizes and qualities)."""
    sources = [Image.open(p).convert("RGB") for p in photos.values()]
    out = []
    for i in range(n):
        im = sources[i % len(sources)]
        scale = 0.4 + 0.05 * (i // len(sources))
        sub = folder / f"set{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"photo{i:02d}.jpg"
        im.resize((max(64, int(im.width * scale)), max(64, int(im.height * scale)))).save(path, quality=80 + i % 15)
        out.append(path)
    return out


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat and int(stat[1]) == pid:
                found.append(int(entry))
    return found


def _stat(pid: int) -> list[str] | None:
    """``[state, ppid, ...]`` of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")  # a zombie has stopped running


def _poll(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _outputs(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*.jpg")}


@pytest.fixture(autouse=True)
def _forget_records(tmp_path):
    """The records of this test's output folders (they live in $VEIL_HOME) go with it."""
    yield
    Manifest(tmp_path / "out", "").path.unlink(missing_ok=True)


def _summary_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if "image(s) anonymized" in line)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_kill_9_mid_batch_then_resume(tmp_path, photos):
    src, out = tmp_path / "in", tmp_path / "out"
    inputs = _make_photos(src, photos)
    args = CLI + [str(src), "-o", str(out), "--jobs", "2", "--preset", "fast"]
    log = (tmp_path / "run1.out").open("w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        record = Manifest(out, "").path  # where the run records each output it finishes
        _poll(lambda: record.exists() and record.read_text().count("\n") >= 3, 300, "three finished outputs")
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    at_kill = _outputs(out)
    assert workers, "no worker processes were seen"
    assert len(at_kill) < N_PHOTOS, "the batch ended before the kill; make it longer"
    _poll(lambda: not any(_alive(w) for w in workers), 10, "the workers to die with their parent")
    after = _outputs(out)  # nothing is written once the workers are gone
    time.sleep(0.5)
    assert _outputs(out) == after

    # what a kill in the middle of a write leaves: a temporary file of veil's naming
    first = sorted(after)[0]
    stale = out / Path(first).parent / f".{Path(first).name}.ab12cd34.veil-tmp"
    stale.write_bytes(b"half a photo")
    foreign = out / Path(first).parent / ".someone-else.veil-tmp"  # not veil's naming: left alone
    foreign.write_bytes(b"x")
    recorded = Manifest.load(out, Options()).records  # read as a later run would (other options: unused here)
    assert recorded and set(recorded) <= after
    # a finished output whose input changed since is made again
    changed = src / sorted(recorded)[0]
    Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed, quality=85)
    finished = {out / k: (out / k).stat().st_mtime_ns for k in sorted(recorded)[1:]}
    redo = out / sorted(recorded)[0]
    redo_before = redo.read_bytes()

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _summary_line(rerun.stdout).startswith(
        f"{N_PHOTOS - len(finished)} image(s) anonymized, {len(finished)} skipped (already done), 0 failed"
    ), rerun.stdout
    assert _outputs(out) == {p.relative_to(src).as_posix() for p in inputs}
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items()), "a finished output was written again"
    assert redo.read_bytes() != redo_before and not stale.exists() and foreign.exists()
    assert not [p for p in out.rglob("*.veil-tmp") if p != foreign]
    assert len(Manifest.load(out, Options.from_mapping({"preset": "fast"})).records) == N_PHOTOS


def test_skip_needs_the_same_options_input_and_output(tmp_path, photos):
    """The manifest's rules, without running models: a record counts only for the same
    options, the same input bytes and the output as veil wrote it."""
    from veil.cli.anonymize import _resume, plan

    src, out = tmp_path / "in", tmp_path / "out"
    inputs = _make_photos(src, photos, n=3)
    work = plan([src], out, False, None)
    blur, pixelate = Options(), Options.from_mapping({"style": "pixelate"})
    manifest = Manifest.load(out, blur)
    out.mkdir()
    for s, d in work:  # stand-in outputs, recorded as finished
        d.parent.mkdir(parents=True, exist_ok=True)
        d.write_bytes(b"output of " + s.name.encode())
        manifest.add(d, file_sha256(s), file_sha256(d))
    with manifest.path.open("a") as f:
        f.write('{"output": "cut sho')  # a line cut short by a kill
    todo, skipped, _ = _resume(work, out, blur, None, False)
    assert todo == [] and len(skipped) == 3
    assert len(_resume(work, out, pixelate, None, False)[0]) == 3  # other options: all again
    assert len(_resume(work, out, blur, False, False)[0]) == 3  # --no-skip-existing
    work[0][1].write_bytes(b"edited by hand")
    inputs[1].write_bytes(inputs[1].read_bytes() + b"\0")
    todo, skipped, m = _resume(work, out, blur, None, False)
    assert {s for s, _ in todo} == {work[0][0], inputs[1]} and len(skipped) == 1
    m.add(work[0][1], "0" * 64, "1" * 64)  # appending after the torn line keeps both readable
    assert len(Manifest.load(out, blur).records) == 3
    with pytest.raises(Exception, match="needs -o"):
        _resume(work, None, blur, True, False)


def test_only_veils_own_temporaries_of_planned_outputs_are_removed(tmp_path):
    dst = tmp_path / "a.jpg"
    mine = tmp_path / ".a.jpg.k3j_9x2z.veil-tmp"
    other_output = tmp_path / ".b.jpg.k3j_9x2z.veil-tmp"  # not an output of this run
    not_veils = tmp_path / ".a.jpg.tmp"
    for p in (mine, other_output, not_veils):
        p.write_bytes(b"x")
    assert remove_stale_temporaries([dst]) == 1
    assert not mine.exists() and other_output.exists() and not_veils.exists()


@pytest.mark.parametrize("means", ["pdeathsig", "watch"])
def test_a_worker_dies_with_its_parent(means):
    """In a child process: ``die_with_parent`` uses prctl on Linux (the parent watch
    elsewhere, forced here for the second case), and the child dies when its parent is
    killed (the parent here is a shell we kill)."""
    if means == "pdeathsig" and not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only; elsewhere the parent watch is used")
    force = "l._pdeathsig = lambda: False; " if means == "watch" else ""
    code = ("import os, time; import veil.cli.lifeline as l; " + force +
            "print(l.die_with_parent(os.getppid()), flush=True); time.sleep(120)")  # fmt: skip
    shell = subprocess.Popen(["/bin/sh", "-c", f'{sys.executable} -c "{code}" & echo $!; wait'],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        child = int(shell.stdout.readline())
        assert shell.stdout.readline().strip() == means
        shell.send_signal(signal.SIGKILL)
        shell.wait(30)
        _poll(lambda: not _alive(child), 10, "the child to die with its parent")
    finally:
        if shell.poll() is None:
            shell.kill()
        shell.stdout.close()


def test_report_counts_skipped(tmp_path, photos):
    """The JSON report and the summary count skipped images apart from anonymized ones."""
    from veil.cli.anonymize import _summary

    items = [{"path": "a", "ok": True, "skipped": True}, {"path": "b", "ok": True, "report": {"hidden": {"face": 1}}},
             {"path": "c", "ok": False, "error": "corrupt"}]  # fmt: skip
    s = _summary(items, False)
    assert (s["images"], s["done"], s["skipped"], s["failed"]) == (3, 1, 1, 1)
    assert json.dumps(s)
