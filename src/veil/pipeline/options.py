"""One typed, validated options object shared by the CLI, the API and the web page.

Defaults are documented here and in the README; every face of veil builds an
:class:`Options` through :meth:`Options.from_mapping` so validation happens once.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from veil.detection.types import TARGETS
from veil.errors import OptionsError

PRESETS = ("fast", "balanced", "thorough")
STYLES = ("blur", "pixelate", "fill")
SHAPES = ("box", "ellipse", "mask")
FORMATS = ("jpeg", "png", "webp", "tiff", "bmp", "heif")
#: Video encoders veil writes (H.264 is the default: every player and browser reads it).
VIDEO_CODECS = ("h264", "hevc")
AUDIO_MODES = ("keep", "drop")
#: Metadata fields that may be kept on request: none of them identifies a person or place.
SAFE_METADATA = ("icc", "orientation", "dpi", "copyright", "artist", "datetime")
#: What is hidden when no targets are given (CLI, API and web page alike).
DEFAULT_TARGETS = ("face", "plate")
_COLOR_RE = re.compile(r"^#?([0-9a-fA-F]{6})$")


def parse_color(value: Any, field: str = "color") -> tuple[int, int, int]:
    """``#RRGGBB`` (``#`` optional) or three integers 0-255; anything else is an error."""
    if isinstance(value, (tuple, list)):
        if len(value) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in value):
            return (int(value[0]), int(value[1]), int(value[2]))
        raise OptionsError(f"{field} must be #RRGGBB or three integers 0-255", field=field)
    m = _COLOR_RE.match(value.strip()) if isinstance(value, str) else None
    if not m:
        raise OptionsError(f"{field} must look like #RRGGBB, got {value!r}", field=field)
    h = m.group(1)
    return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _str_list(name: str, value: Any) -> tuple[str, ...]:
    """A list of strings, or one comma-separated string (the CLI's ``--targets face,plate``)."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise OptionsError(f"{name} must be a list of strings; got {value!r}", field=name)


@dataclass
class TargetStyle:
    """Per-target override of the masking look (e.g. plates filled, faces blurred)."""

    style: str | None = None
    shape: str | None = None
    color: tuple[int, int, int] | None = None


@dataclass
class Options:
    """What to hide and how. Defaults: faces and plates; blur; strength 30."""

    #: Whole people only on request: a person box blurs most of a portrait.
    targets: tuple[str, ...] = DEFAULT_TARGETS
    preset: str = "balanced"
    style: str = "blur"
    #: ``None`` means the per-target default: ellipse for faces and heads, box otherwise.
    shape: str | None = None
    color: tuple[int, int, int] = (0, 0, 0)
    strength: int = 30
    feather: float = 0.2
    #: Box growth around faces before masking (1.3 = 30% larger, like deface).
    margin: float = 1.3
    #: Re-scan the output and mask any face still found; ``None`` = on in ``thorough``.
    verify: bool | None = None
    #: Hide the head of a person whose face was not found.
    hide_heads: bool = True
    per_target: dict[str, TargetStyle] = field(default_factory=dict)
    #: Output format; ``None`` keeps the input's format.
    format: str | None = None
    #: JPEG/WEBP quality; ``None`` estimates the input's (default 92).
    quality: int | None = None
    keep_metadata: tuple[str, ...] = ()
    #: Video only: encoder of the output; ``None`` = H.264.
    video_codec: str | None = None
    #: Video only: constant rate factor (0-51, lower is better); ``None`` = close to the input's.
    video_quality: int | None = None
    #: Video only: ``keep`` copies the audio packet for packet, ``drop`` removes it.
    audio: str = "keep"
    #: Video only: frames a track is hidden before its first and after its last detection.
    track_extend: int = 5

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -------------------------------------------------------------------
    def validate(self) -> None:
        """Check every field against its one type and range (``bool`` is never a number,
        a string is never a boolean): a wrong type is an :class:`OptionsError` naming it."""
        self.targets = tuple(dict.fromkeys(_str_list("targets", self.targets)))
        if not self.targets:
            raise OptionsError("choose at least one target", field="targets")
        for t in self.targets:
            if t not in TARGETS:
                raise OptionsError(f"unknown target {t!r}; choose from {', '.join(TARGETS)}", field="targets")
        _choice("preset", self.preset, PRESETS)
        _choice("style", self.style, STYLES)
        if self.shape is not None:
            _choice("shape", self.shape, SHAPES)
        self.color = parse_color(self.color)
        if not _is_number(self.strength) or not 0 <= self.strength <= 100:
            raise OptionsError("strength must be a number from 0 to 100", field="strength")
        self.strength = int(round(self.strength))
        if not _is_number(self.feather) or not 0 <= self.feather <= 1:
            raise OptionsError("feather must be a number from 0 to 1", field="feather")
        if not _is_number(self.margin) or not 1.0 <= self.margin <= 3.0:
            raise OptionsError("margin must be a number from 1.0 to 3.0", field="margin")
        if self.verify is not None and not isinstance(self.verify, bool):
            raise OptionsError(f"verify must be true or false; got {self.verify!r}", field="verify")
        if not isinstance(self.hide_heads, bool):
            raise OptionsError(f"hide_heads must be true or false; got {self.hide_heads!r}", field="hide_heads")
        if self.format is not None:
            if not isinstance(self.format, str):
                raise OptionsError(f"format must be one of {', '.join(FORMATS)}; got {self.format!r}", field="format")
            fmt = self.format.lower()
            fmt = {"jpg": "jpeg", "jfif": "jpeg", "heic": "heif", "tif": "tiff"}.get(fmt, fmt)
            _choice("format", fmt, FORMATS)
            self.format = fmt
        if self.quality is not None and (not _is_int(self.quality) or not 1 <= self.quality <= 100):
            raise OptionsError("quality must be an integer from 1 to 100", field="quality")
        self.keep_metadata = _str_list("keep_metadata", self.keep_metadata)
        for k in self.keep_metadata:
            _choice("keep_metadata", k, SAFE_METADATA)
        if self.video_codec is not None:
            _choice("video_codec", self.video_codec, VIDEO_CODECS)
        if self.video_quality is not None and (not _is_int(self.video_quality) or not 0 <= self.video_quality <= 51):
            raise OptionsError("video_quality must be an integer from 0 to 51 (CRF)", field="video_quality")
        _choice("audio", self.audio, AUDIO_MODES)
        if not _is_int(self.track_extend) or not 0 <= self.track_extend <= 50:
            raise OptionsError("track_extend must be an integer from 0 to 50 (frames)", field="track_extend")
        per: dict[str, TargetStyle] = {}
        if not isinstance(self.per_target, Mapping):
            raise OptionsError('per_target must be an object like {"plate": {"style": "fill"}}', field="per_target")
        for target, ts in self.per_target.items():
            where = f"per_target.{target}"
            if target not in TARGETS + ("head",):
                raise OptionsError(f"unknown target {target!r} in per-target styles", field="per_target")
            if isinstance(ts, Mapping):
                unknown = set(ts) - {"style", "shape", "color"}
                if unknown:
                    raise OptionsError(f"unknown per-target field(s): {', '.join(sorted(map(str, unknown)))}", field=where)
                ts = TargetStyle(**ts)
            elif not isinstance(ts, TargetStyle):
                raise OptionsError(f'{where} must be an object like {{"style": "fill"}}; got {ts!r}', field=where)
            if ts.style is not None:
                _choice(f"{target}_style", ts.style, STYLES)
            if ts.shape is not None:
                _choice(f"{target}_shape", ts.shape, SHAPES)
            if ts.color is not None:
                ts.color = parse_color(ts.color, field=f"{target}_color")
            per[target] = ts
        self.per_target = per

    # -- derived values -----------------------------------------------------------------
    @property
    def verify_enabled(self) -> bool:
        return self.preset == "thorough" if self.verify is None else bool(self.verify)

    def style_for(self, target: str) -> TargetStyle:
        """The resolved style, shape and colour for one target."""
        ts = self.per_target.get(target) or self.per_target.get("face" if target == "head" else "") or TargetStyle()
        default_shape = "ellipse" if target in ("face", "head") else "box"
        return TargetStyle(
            style=ts.style or self.style,
            shape=ts.shape or self.shape or default_shape,
            color=ts.color or self.color,
        )

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "Options":
        """Build from JSON/TOML/CLI values; unknown keys are errors, not silently ignored.

        Flat keys ``<target>_style``, ``<target>_shape``, ``<target>_color`` are accepted
        as shorthand for ``per_target``.
        """
        if not isinstance(data, Mapping):
            raise OptionsError("options must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        per: dict[str, dict[str, Any]] = _per_target_mapping(data.get("per_target"))
        for key, value in data.items():
            if key == "per_target" or value is None:
                continue
            m = re.fullmatch(r"(face|person|plate|head)_(style|shape|color)", key)
            if m:
                per.setdefault(m.group(1), {})[m.group(2)] = value
            elif key in names:
                kwargs[key] = value
            else:
                raise OptionsError(f"unknown option {key!r}", field=key)
        kwargs["per_target"] = per
        try:
            return cls(**kwargs)
        except TypeError as exc:  # wrong value types that dataclass init rejects
            raise OptionsError(str(exc)) from None

    @classmethod
    def from_toml(cls, path: Path, overrides: Mapping[str, Any] | None = None) -> "Options":
        """Load a preset file (a flat TOML table, optionally under ``[veil]``)."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise OptionsError(f"cannot read options file {path}: {exc}") from None
        data = dict(data.get("veil", data))
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_mapping(data)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["targets"] = list(self.targets)
        out["keep_metadata"] = list(self.keep_metadata)
        out["color"] = "#%02x%02x%02x" % self.color
        out["per_target"] = {
            t: {k: ("#%02x%02x%02x" % v if k == "color" and v else v) for k, v in dataclasses.asdict(s).items() if v is not None}
            for t, s in self.per_target.items()
        }
        return out


def _per_target_mapping(raw: Any) -> dict[str, dict[str, Any]]:
    """``per_target`` from JSON/TOML: an object of objects, checked before it is copied."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise OptionsError('per_target must be an object like {"plate": {"style": "fill"}}', field="per_target")
    out: dict[str, dict[str, Any]] = {}
    for target, value in raw.items():
        if not isinstance(value, Mapping):
            raise OptionsError(f'per_target.{target} must be an object like {{"style": "fill"}}; got {value!r}',
                               field=f"per_target.{target}")
        out[str(target)] = dict(value)
    return out


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise OptionsError(f"{name} must be one of {', '.join(allowed)}; got {value!r}", field=name)
