"""The one anonymization pipeline: decode -> detect -> mask -> (verify) -> encode.

The CLI, the API and the web page all call :func:`anonymize` (arrays),
:func:`anonymize_bytes` (an upload) or :func:`anonymize_file` (a file on disk), so a
photo is hidden the same way whichever face of veil handled it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from veil.detection.boxes import mostly_inside
from veil.detection.types import ALL_KINDS, Detection
from veil.errors import OptionsError
from veil.imageio import CONTENT_TYPES, DEFAULT_LIMITS, Limits, LoadedImage, atomic_write, encode_image, load_image
from veil.imageio.icc import output_profile
from veil.masking import MaskedRegion, mask_detections
from veil.pipeline.options import Options

#: Strength used to re-hide whatever the verify pass still finds.
VERIFY_STRENGTH = 100


@dataclass
class Report:
    """What happened to one image. Never holds pixels, GPS or any other metadata value."""

    width: int
    height: int
    format_in: str
    format_out: str | None = None
    detections: dict[str, int] = field(default_factory=dict)
    regions: list[MaskedRegion] = field(default_factory=list)
    #: Faces the verify pass still found in the output, away from the regions already hidden
    #: (all of them re-hidden); None = not run.
    verify_found: int | None = None
    metadata_removed: list[str] = field(default_factory=list)
    metadata_kept: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    #: ``engine`` (detected here) or ``regions`` (given by the caller, nothing detected).
    source: str = "engine"
    preset: str = "balanced"
    orientation_applied: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def hidden(self) -> dict[str, int]:
        """Regions hidden per target (heads count with faces' look but separately)."""
        out: dict[str, int] = {}
        for r in self.regions:
            out[r.target] = out.get(r.target, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "format_in": self.format_in,
            "format_out": self.format_out,
            "detections": dict(self.detections),
            "hidden": self.hidden,
            "regions": [r.to_json() for r in self.regions],
            "verify_found": self.verify_found,
            "metadata_removed": list(self.metadata_removed),
            "metadata_kept": list(self.metadata_kept),
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
            "models": list(self.models),
            "source": self.source,
            "preset": self.preset,
            "orientation_applied": self.orientation_applied,
            "notes": list(self.notes),
        }


@dataclass
class AnonymizeResult:
    """An encoded, anonymized image and its report."""

    data: bytes
    content_type: str
    format: str
    report: Report


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def wanted_detections(dets: Sequence[Detection], options: Options) -> list[Detection]:
    """The engine's detections the options ask to hide (heads go with faces)."""
    keep_heads = options.hide_heads and "face" in options.targets
    return [d for d in dets if d.target in options.targets or (d.target == "head" and keep_heads)]


def _checked_regions(regions: Sequence[Detection], width: int, height: int) -> list[Detection]:
    out: list[Detection] = []
    for i, r in enumerate(regions):
        if not isinstance(r, Detection):
            raise OptionsError(f"regions[{i}] is not a Detection", field="regions")
        if r.target not in ALL_KINDS:
            raise OptionsError(f"regions[{i}]: unknown target {r.target!r}; choose from {', '.join(ALL_KINDS)}", field="regions")
        if len(r.box) != 4 or not all(np.isfinite(v) for v in r.box):
            raise OptionsError(f"regions[{i}]: box must be four finite numbers", field="regions")
        x1, y1, x2, y2 = (float(v) for v in r.box)
        d = Detection(r.target, float(r.score), (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)),
                      r.landmarks, r.keypoints, r.polygon, r.source or "manual", dict(r.extra))  # fmt: skip
        out.append(d.clipped(width, height))
    return out


def _model_names(engine: Any, targets: Sequence[str]) -> list[str]:
    fn = getattr(engine, "model_names", None)
    if fn is None:
        return []
    try:
        try:
            names = fn(tuple(targets))
        except TypeError:
            names = fn()
        return [str(n) for n in names]
    except Exception:  # the report must not fail because an engine cannot describe itself
        return []


def anonymize(
    image: LoadedImage,
    options: Options,
    *,
    regions: list[Detection] | None = None,
    engine: Any = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, Report]:
    """Hide what ``options`` asks for in ``image``; returns the new RGB array and a report.

    With ``regions`` (manual corrections), exactly those are hidden and nothing is
    detected. Otherwise the engine of ``options.preset`` runs for ``options.targets``,
    and with ``options.verify_enabled`` the output is scanned for faces once more and
    any found away from the regions already hidden is hidden at full strength. ``rng`` seeds the masks' random
    dithering (tests); None draws fresh entropy, as production must.
    """
    report = Report(
        width=image.width,
        height=image.height,
        format_in=image.format,
        preset=options.preset,
        orientation_applied=image.orientation,
        timings_ms={"decode": image.decode_ms},
        metadata_removed=_metadata_removed(image, options),
    )
    if image.frames > 1:
        report.notes.append(f"only the primary image of {image.frames} was kept")
    t0 = time.perf_counter()
    if regions is None:
        if engine is None:
            from veil.detection.engine import get_engine

            engine = get_engine(options.preset)
        dets = wanted_detections(engine.detect(image.rgb, targets=options.targets), options)
        report.models = _model_names(engine, options.targets)
        stage = "detect"
    else:
        dets = _checked_regions(regions, image.width, image.height)
        report.source, stage = "regions", "manual"
    report.timings_ms["detect"] = _ms(t0)
    for d in dets:
        report.detections[d.target] = report.detections.get(d.target, 0) + 1

    t0 = time.perf_counter()
    rng = rng if rng is not None else np.random.default_rng()
    out, masked = mask_detections(image.rgb, dets, options, stage=stage, rng=rng)
    report.regions = masked
    report.timings_ms["mask"] = _ms(t0)

    if regions is None and options.verify_enabled:
        t0 = time.perf_counter()
        found = [d for d in engine.detect(out, targets=("face",)) if d.target == "face"]
        # a face found mostly on a region already hidden is that region seen again, not a miss
        hidden = mostly_inside(np.array([d.box for d in found], np.float32), np.array([r.box for r in report.regions], np.float32))
        found = [d for d, h in zip(found, hidden) if not h]
        if found:
            out, again = mask_detections(out, found, options, strength=VERIFY_STRENGTH, stage="verify", rng=rng)
            report.regions += again
        report.verify_found = len(found)
        report.timings_ms["verify"] = _ms(t0)
    return out, report


def anonymize_bytes(
    data: bytes,
    options: Options,
    *,
    regions: list[Detection] | None = None,
    engine: Any = None,
    limits: Limits = DEFAULT_LIMITS,
) -> AnonymizeResult:
    """Decode an upload, anonymize it and encode it (format: ``options.format`` or the input's)."""
    image = load_image(data, limits=limits)
    out, report = anonymize(image, options, regions=regions, engine=engine)
    return _encoded(image, out, report, options)


def _icc(image: LoadedImage, options: Options) -> tuple[bytes | None, str | None]:
    """The profile the output carries and what of the input's was removed (see imageio.icc)."""
    return output_profile(image.icc_profile, keep_text="icc" in options.keep_metadata)


def _metadata_removed(image: LoadedImage, options: Options) -> list[str]:
    removed = _icc(image, options)[1] if image.icc_profile else "icc"
    return [m for m in image.metadata if m != "icc"] + ([removed] if "icc" in image.metadata and removed else [])


def _encoded(image: LoadedImage, out: np.ndarray, report: Report, options: Options) -> AnonymizeResult:
    t0 = time.perf_counter()
    fmt = options.format or image.format
    keep = {k: image.safe_metadata[k] for k in options.keep_metadata if k in image.safe_metadata and k != "icc"}
    icc = _icc(image, options)[0]
    payload = encode_image(
        out,
        image.alpha,
        fmt,
        quality=options.quality or image.quality,
        icc_profile=icc,
        keep=keep,
        subsampling=image.subsampling if fmt == image.format == "jpeg" else None,
        nature=image.nature,
        source=image.rgb,
    )
    report.timings_ms["encode"] = _ms(t0)
    report.format_out = fmt
    report.metadata_kept = (["icc"] if icc else []) + sorted(keep)
    if image.alpha is not None and fmt == "jpeg":
        report.notes.append("transparency flattened onto white (JPEG has no alpha)")
    return AnonymizeResult(payload, CONTENT_TYPES[fmt], fmt, report)


def anonymize_file(
    src: Path,
    dst: Path | None,
    options: Options,
    *,
    engine: Any = None,
    limits: Limits = DEFAULT_LIMITS,
    overwrite_input: bool = False,
) -> Report:
    """Anonymize the file ``src`` into ``dst`` (atomically); ``dst=None`` is a dry run.

    A dry run detects and masks in memory but encodes and writes nothing. ``dst`` equal
    to ``src`` is refused unless ``overwrite_input`` (the CLI's ``--in-place``).
    """
    src = Path(src)
    if dst is not None and not overwrite_input and Path(dst).resolve() == src.resolve():
        raise OptionsError(f"refusing to overwrite the input {src} (use --in-place)")
    image = load_image(src, limits=limits)
    out, report = anonymize(image, options, engine=engine)
    if dst is None:
        return report
    result = _encoded(image, out, report, options)
    atomic_write(dst, result.data)
    return report
