"""Privacy leftovers: onnxruntime's telemetry database, ICC profiles on output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_running_a_model_leaves_no_telemetry_database(tmp_path, photos):
    """onnxruntime writes ``.onnxruntime/onnxruntime.db`` (and a device id) under the
    user's cache as soon as it is loaded, unless veil switches its telemetry off."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), VEIL_HOME=os.environ["VEIL_HOME"])
    code = (
        "import json, sys; from veil.detection.engine import get_engine; from veil.imageio import load_image; "
        "dets = get_engine('fast').detect(load_image(sys.argv[1]).rgb, ('face',)); print(json.dumps(len(dets)))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(photos["astronaut"])], env=env, capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) >= 1, "the face model did not run"
    left = [str(p.relative_to(home)) for p in home.rglob("*")]
    assert not any(".onnxruntime" in p or p.endswith(".db") or "deviceid" in p for p in left), left
