"""One description of formats and options, and no import cycles (issue 13, part 8).

Every format record must agree with what the reader sniffs, the writer writes and Pillow
reads back; the CLI walks folders by the same suffixes the server and the page accept;
``GET /api/v1/options`` lists exactly what :class:`Options` validates; the CLI help is the
generated text; and ``src/veil`` has no cycle among its module-level imports.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_server_support import assert_problem, shared_main_server
from typer.testing import CliRunner

from veil.cli import paths as cli_paths
from veil.cli import submit as cli_submit
from veil.errors import OptionsError
from veil.imageio import CONTENT_TYPES, EXTENSIONS, SUPPORTED, encode_image, formats, sniff_format
from veil.pipeline.options import FORMATS, OPTION_FIELDS, Options, option_help
from veil.server import uploads
from veil.video.sniff import sniff_container

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def live():
    return shared_main_server()


# -- formats -------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", formats.IMAGE_FORMATS, ids=lambda f: f.name)
def test_each_format_record_agrees_with_reader_writer_and_pillow(spec):
    rgb = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    alpha = np.full((24, 32), 200, np.uint8)
    data = encode_image(rgb, alpha, spec.name, quality=90)
    assert sniff_format(data) == spec.name and formats.sniff(data) is spec
    assert uploads.sniff_format(data) == spec.name  # the server sniffs with the same record
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == spec.pil_name and im.size == (32, 24)
        assert ("A" in im.mode) == spec.alpha, im.mode
    assert EXTENSIONS[spec.name] == spec.extension and CONTENT_TYPES[spec.name] == spec.mime_type
    assert uploads.EXTENSIONS[spec.name] == spec.extension.lstrip(".")
    for name in (spec.name, *spec.aliases, *spec.extensions, spec.name.upper()):
        assert formats.lookup(name) is spec, name
        assert Options.from_mapping({"format": name}).format == spec.name
    assert spec.label in uploads.FORMAT_NAMES


def test_cli_api_and_options_accept_the_same_formats():
    names = tuple(f.name for f in formats.IMAGE_FORMATS)
    assert SUPPORTED == uploads.ACCEPTED_FORMATS == FORMATS == names
    assert cli_paths.IMAGE_SUFFIXES == formats.SUFFIXES == {e for f in formats.IMAGE_FORMATS for e in f.extensions}
    assert {".tif", ".tiff", ".heic", ".heif", ".jpg", ".jfif"} <= cli_paths.IMAGE_SUFFIXES
    # every suffix a result can be served as maps back to that format's own suffix
    for f in (*formats.IMAGE_FORMATS, *formats.VIDEO_FORMATS):
        for t in f.mime_types:
            assert cli_submit._EXT[t] == f.extension.lstrip(".")
    assert len({t for f in formats.IMAGE_FORMATS for t in f.mime_types}) == sum(len(f.mime_types) for f in formats.IMAGE_FORMATS)


def test_folder_walk_picks_every_listed_suffix(tmp_path):
    for i, suffix in enumerate(sorted(formats.SUFFIXES | formats.VIDEO_SUFFIXES)):
        (tmp_path / f"f{i}{suffix.upper() if i % 2 else suffix}").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("no")
    found = {p.suffix.lower() for p, _ in cli_paths.collect_images([tmp_path])}
    assert found == formats.SUFFIXES | formats.VIDEO_SUFFIXES


def test_video_records_name_the_families_the_sniffer_returns():
    heads = {
        "mp4": b"\0\0\0\x18ftypisom" + b"\0" * 16,
        "mov": b"\0\0\0\x14ftypqt  " + b"\0" * 16,
        "matroska": b"\x1a\x45\xdf\xa3" + b"\0" * 16,
        "avi": b"RIFF\0\0\0\0AVI LIST",
        "flv": b"FLV\x01" + b"\0" * 16,
        "mpegts": bytes([0x47] + [0] * 187) * 3,
    }
    assert set(heads) == set(formats.VIDEO_BY_NAME)
    for name, head in heads.items():
        assert sniff_container(head) == name


def test_formats_endpoint_lists_the_records_and_the_server_takes_each_one(live):
    with live.client() as c:
        listed = c.get("/api/v1/formats").json()["formats"]
        assert listed == formats.describe_all()
        images = [f for f in listed if f["kind"] == "image"]
        assert [f["name"] for f in images] == list(SUPPORTED) and {"tif", "tiff"} <= set(images[4]["extensions"])
        assert "image/heic" in images[3]["mime_types"] and "image/heif" in images[3]["mime_types"]
        rgb = np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8)
        for f in images:  # the page accepts these, so the API must take every one
            data = encode_image(rgb, None, f["name"])
            r = c.post("/api/v1/render", files={"file": (f"x.{f['extensions'][0]}", data, f["mime_type"])},
                       data={"regions": "[]"})
            assert r.status_code == 200, (f["name"], r.text)
            assert r.headers["content-type"].startswith(f["mime_type"])


# -- options -------------------------------------------------------------------------------
def _value(entry, choice):
    return [choice] if entry["type"] == "array" else choice


def test_options_endpoint_matches_the_options_fields_and_their_validation(live):
    with live.client() as c:
        listed = c.get("/api/v1/options").json()["options"]
    defaults = Options().to_json()
    assert [o["name"] for o in listed] == [f.name for f in dataclasses.fields(Options)]
    for o in listed:
        assert o["default"] == defaults[o["name"]], o["name"]
        assert o["help"] and o["type"] in ("string", "integer", "number", "boolean", "array", "object")
        for choice in o.get("choices", []):
            Options.from_mapping({o["name"]: _value(o, choice)})  # every choice listed is taken
        if "choices" in o:
            with pytest.raises(OptionsError) as exc:
                Options.from_mapping({o["name"]: _value(o, "no-such-choice")})
            assert exc.value.field == o["name"]
        if "min" in o:
            step = 1 if o["type"] == "integer" else 0.01
            for ok in (o["min"], o["max"]):
                Options.from_mapping({o["name"]: ok})
            for bad in (o["min"] - step, o["max"] + step):
                with pytest.raises(OptionsError, match=f"from {o['min']} to {o['max']}"):
                    Options.from_mapping({o["name"]: bad})
    by = {o["name"]: o for o in listed}
    assert by["strength"]["min"] == 0 and by["strength"]["max"] == 100 and by["format"]["choices"] == list(SUPPORTED)


def test_a_value_outside_a_listed_range_is_a_problem_document(live):
    with live.client() as c:
        strength = next(o for o in c.get("/api/v1/options").json()["options"] if o["name"] == "strength")
        data = encode_image(np.zeros((16, 16, 3), np.uint8), None, "png")
        r = c.post("/api/v1/render", files={"file": ("x.png", data, "image/png")},
                   data={"regions": "[]", "options": '{"strength": %d}' % (strength["max"] + 1)})
    assert_problem(r, 422)
    assert "strength" in r.text


def test_cli_help_is_generated_from_the_fields():
    from veil.cli.main import app

    res = CliRunner().invoke(app, ["anonymize", "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert res.exit_code == 0
    text = re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", res.output))
    for name in ("strength", "preset", "format", "keep_metadata", "track_extend", "targets"):
        assert option_help(name) in text, (name, option_help(name))
    assert "0-100 (default: 30)" in option_help("strength")
    assert "jpeg, png, webp, heif, tiff or bmp" in option_help("format")


def test_option_metadata_is_complete():
    for name, f in OPTION_FIELDS.items():
        meta = f.metadata
        assert meta["help"], name
        assert (meta["min"] is None) == (meta["max"] is None), name


# -- import cycles -------------------------------------------------------------------------
def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted((SRC / "veil").rglob("*.py")):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _module_level_imports(tree: ast.Module):
    """Imports that run when the module is imported: not those inside functions (lazy,
    allowed) nor under ``if TYPE_CHECKING``."""
    stack = list(tree.body)
    while stack:
        n = stack.pop()
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            yield n
        elif isinstance(n, ast.If):
            if not _type_checking(n):
                stack += n.body + n.orelse
        elif isinstance(n, ast.Try):
            stack += n.body + n.orelse + n.finalbody + [s for h in n.handlers for s in h.body]
        elif isinstance(n, ast.With):
            stack += n.body


def _type_checking(n: ast.AST) -> bool:
    t = getattr(n, "test", None)
    return isinstance(n, ast.If) and (getattr(t, "id", None) == "TYPE_CHECKING" or getattr(t, "attr", None) == "TYPE_CHECKING")


def _all_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import that can ever run, lazy ones included (``if TYPE_CHECKING`` never runs)."""
    typing_only = {id(x) for n in ast.walk(tree) if _type_checking(n) for x in ast.walk(n)}
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in typing_only]


def import_graph(lazy: bool = False) -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = _all_imports(tree) if lazy else _module_level_imports(tree)
        edges: set[str] = set()
        for n in nodes:
            if isinstance(n, ast.Import):
                targets = [a.name for a in n.names]
            else:
                base = n.module or ""
                if n.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - n.level + 1]
                    base = ".".join(up + ([n.module] if n.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in n.names]
            edges |= {t for t in targets if t in mods and t != name}
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    path: list[str] = []
    found: list[list[str]] = []

    def visit(u: str) -> None:
        state[u] = 1
        path.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                found.append(path[path.index(v) :] + [v])
            elif v not in state:
                visit(v)
        path.pop()
        state[u] = 2

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    for u in sorted(graph):
        if u not in state:
            visit(u)
    return found


def test_no_import_cycle_among_module_level_imports():
    graph = import_graph()
    assert len(graph) > 50 and "veil.pipeline.core" in graph["veil.cli.anonymize"] | graph["veil.cli.common"] | {
        m for m in graph if m.startswith("veil.pipeline")}  # the walk sees the package
    cycles = find_cycles(graph)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_lower_layers_never_import_upper_ones_even_lazily():
    """The named cycles of issue 13, through lazy imports too: the model store's converters
    never reach detection, the client never loads the server, masking never the pipeline,
    the inference sessions never what runs them."""
    graph = import_graph(lazy=True)
    rules = {"veil.models": ("veil.detection", "veil.pipeline", "veil.server"),
             "veil.client": ("veil.server",), "veil.masking": ("veil.pipeline", "veil.server"),
             "veil.imageio": ("veil.pipeline", "veil.detection", "veil.server", "veil.cli"),
             "veil.inference": ("veil.detection", "veil.pipeline", "veil.server", "veil.cli", "veil.video")}  # fmt: skip
    bad = [(m, t) for m, edges in graph.items() for t in edges
           for low, high in rules.items() if (m == low or m.startswith(low + ".")) and t.startswith(high)]  # fmt: skip
    assert not bad, bad


def test_readme_format_table_matches_the_records():
    readme = (SRC.parent / "README.md").read_text(encoding="utf-8")
    rows = {}
    for line in readme.splitlines():
        m = re.match(r"\| `(\w+)`( \([^)]*\))? \| (.*?) \| `([\w/.+-]+)` \|\s*(.*?)\s*\| (kept|flattened onto white) \|$", line)
        if m:
            rows[m.group(1)] = m
    assert list(rows) == list(SUPPORTED)
    for f in formats.IMAGE_FORMATS:
        m = rows[f.name]
        assert re.findall(r"`([^`]+)`", m.group(3)) == list(f.extensions)
        assert m.group(4) == f.mime_type and re.findall(r"`([^`]+)`", m.group(5)) == list(f.mime_aliases)
        assert re.findall(r"`([^`]+)`", m.group(2) or "") == list(f.aliases)
        assert (m.group(6) == "kept") == f.alpha
