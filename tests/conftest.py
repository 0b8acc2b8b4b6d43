"""Shared fixtures: real sample photos from registry packages and the engine, loaded once.

Photos come from scikit-image (``astronaut``), matplotlib (``grace_hopper.jpg``) and the
ultralytics wheel (``bus.jpg``, ``zidane.jpg``: only those files are taken, the package is
never installed). Everything is cached under ``$VEIL_HOME`` so a test session downloads
nothing twice.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("VEIL_HOME", str(Path(__file__).resolve().parents[1] / ".veil-home"))


def _asset_dir() -> Path:
    d = Path(os.environ["VEIL_HOME"]) / "test-assets"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _fetch_assets() -> Path:
    """``bus.jpg`` and ``zidane.jpg``: the pinned photos the face model calibrates on."""
    from veil.models import get_spec
    from veil.models.store import fetch_files

    d = _asset_dir()
    cal = get_spec("face-yolo11m").calibration
    assert cal is not None
    if not all((d / Path(f.member).name).exists() for f in cal.files):
        fetch_files(cal, d, "test photos")
    return d


@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    """Paths of real JPEG photos: astronaut, grace_hopper, bus, zidane."""
    from matplotlib import cbook
    from skimage import data as skdata

    d = _fetch_assets()
    astro = d / "astronaut.jpg"
    if not astro.exists():
        Image.fromarray(skdata.astronaut()).save(astro, quality=95)
    hopper = d / "grace_hopper.jpg"
    if not hopper.exists():
        hopper.write_bytes(Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes())
    return {"astronaut": astro, "grace_hopper": hopper, "bus": d / "bus.jpg", "zidane": d / "zidane.jpg"}


@pytest.fixture(scope="session")
def engine():
    """The default-preset engine, with every model loaded once for the whole session."""
    from veil.detection.engine import get_engine

    eng = get_engine("balanced")
    eng.warm_up()
    return eng


def rgb_of(path: Path) -> np.ndarray:
    from veil.imageio import load_image

    return load_image(path).rgb


def jpeg_bytes(rgb: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=92, **kw)
    return buf.getvalue()


# -- imageio / masking / pipeline / CLI fixtures ------------------------------------------
@pytest.fixture(scope="session")
def astronaut_rgb() -> np.ndarray:
    """scikit-image's astronaut (512x512, one frontal face near (180, 66)-(270, 176))."""
    from skimage import data as skdata

    return np.ascontiguousarray(skdata.astronaut())


@pytest.fixture(scope="session")
def hopper_rgb() -> np.ndarray:
    """matplotlib's grace_hopper.jpg (512x600, one face near (179, 119)-(354, 332))."""
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        return np.asarray(im.convert("RGB")).copy()


def fresh_python(code: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None):
    """Run ``code`` (with ``args`` as ``sys.argv[1:]``) in a fresh interpreter: its own
    imports, memory and model sessions. It must succeed; returns the finished process."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr
    return out
