"""Property tests: the API against its own OpenAPI schema (schemathesis), and the option
and region parsers against arbitrary JSON (hypothesis). Bounded and derandomized, so
every run tries the same examples.

* Every answer of the real server is below 500, and every error is a problem document.
* ``Options.from_mapping`` raises :class:`OptionsError` or nothing; the server's JSON
  parsing of ``options`` and ``regions`` raises a 422 :class:`Problem` or nothing.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_server_support import shared_main_server

from veil.errors import OptionsError
from veil.pipeline.options import Options
from veil.server.problems import Problem

RUNS: Counter[str] = Counter()
BOUNDED = settings(max_examples=12, derandomize=True, deadline=None, database=None,
                   suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def live():
    srv = shared_main_server()
    yield srv
    print(f"\nproperties run: {dict(RUNS)}")


def _own_schema() -> dict:
    """The schema the server publishes at /openapi.json, built by the app itself."""
    from veil.server.app import create_app
    from veil.server.config import ServerConfig

    return create_app(ServerConfig(data_dir=Path(tempfile.mkdtemp(prefix="veil-schema-")))).openapi()


schema = schemathesis.openapi.from_dict(_own_schema())


@schema.parametrize()
@BOUNDED
def test_api_answers_from_its_own_schema(case, live):
    r = case.call(base_url=live.url, timeout=60)
    RUNS["schemathesis"] += 1
    assert r.status_code < 500, f"{case.method} {case.formatted_path}: {r.status_code} {r.text[:300]}"
    if r.status_code >= 400:
        ctype = {k.lower(): v for k, v in r.headers.items()}.get("content-type") or [""]
        ctype = ctype[0] if isinstance(ctype, list) else ctype
        assert ctype.startswith("application/problem+json"), f"{case.method} {case.formatted_path}: {ctype}"
        body = r.json()
        assert body["status"] == r.status_code and body["title"] and body["detail"], body


# -- parsers -------------------------------------------------------------------------------
_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12)
_json = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
                     max_leaves=12)
_field_names = st.sampled_from(
    ["targets", "preset", "style", "shape", "color", "strength", "feather", "margin", "verify", "hide_heads",
     "per_target", "format", "quality", "keep_metadata", "face_style", "plate_color", "person_shape", "head_style",
     "video_codec", "video_quality", "audio", "track_extend", "colour"]
)
_values = _json | st.sampled_from(["face", "blur", "fill", "mask", "fast", "#00ff00", "jpeg", "h264", "keep", "icc"]) | \
    st.lists(st.sampled_from(["face", "person", "plate", "icc", "dpi"]), max_size=3) | \
    st.dictionaries(st.sampled_from(["face", "plate", "head", "car"]),
                    st.dictionaries(st.sampled_from(["style", "shape", "color", "size"]), _json, max_size=3), max_size=2)
_options = st.dictionaries(_field_names, _values, max_size=6)


@given(_options)
@settings(BOUNDED, max_examples=400)
def test_options_parser_raises_only_options_errors(data):
    RUNS["options"] += 1
    try:
        opts = Options.from_mapping(data)
    except OptionsError as exc:
        assert str(exc)
        return
    assert Options.from_mapping(opts.to_json()) == opts  # what it accepts, it can echo and re-read


@given(st.one_of(_json.map(json.dumps), _options.map(json.dumps), st.text(max_size=40)))
@settings(BOUNDED, max_examples=300)
def test_server_options_parser_answers_only_422(raw):
    from veil.server.routes_jobs import parse_options

    RUNS["options JSON"] += 1
    try:
        assert isinstance(parse_options(raw), Options)
    except Problem as exc:
        assert exc.status == 422 and exc.errors and exc.errors[0]["field"].startswith("options")


_region = st.dictionaries(st.sampled_from(["target", "box", "score", "extra"]),
                          _json | st.sampled_from(["face", "plate", "head"])
                          | st.lists(st.integers(-10, 5000) | st.floats(allow_nan=True), min_size=3, max_size=5),
                          max_size=4)


@given(st.one_of(st.lists(_region, max_size=5).map(json.dumps), _json.map(json.dumps), st.text(max_size=40)))
@settings(BOUNDED, max_examples=300)
def test_regions_parser_answers_only_422(raw):
    from veil.server.routes_misc import parse_regions

    RUNS["regions JSON"] += 1
    try:
        regions = parse_regions(raw, max_regions=3)
    except Problem as exc:
        assert exc.status == 422 and exc.errors and exc.errors[0]["field"].startswith("regions")
        return
    assert all(d.box[2] > d.box[0] and d.box[3] > d.box[1] for d in regions)
