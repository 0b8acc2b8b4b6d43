"""Server hardening (issue 12): pixel budgets and the ratio rule, strict option types,
broken multipart, tenancy of anonymous jobs, webhook address rules, security headers.

Real servers running the real pipeline (see ``test_server_support``); each test is a
defect that answered wrongly before (a 202 for a bomb, a 500 for deep JSON...).
"""

from __future__ import annotations

import io
import json
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image
from conftest import fresh_python
from hostile_corpus import patch_jpeg_size
from test_server_support import (
    FAST,
    Receiver,
    assert_problem,
    photo_files,
    small_photo,
    start_server,
    wait_job,
)

from veil.server.config import ServerConfig, ServerLimits


@contextmanager
def serving(**config) -> Iterator[Any]:
    """A real one-worker server on a fresh data directory, stopped afterwards."""
    limits = config.pop("limits", ServerLimits())
    s = start_server(ServerConfig(data_dir=Path(tempfile.mkdtemp(prefix="veil-hard-")), workers=1, queue_size=8,
                                  limits=limits, **config))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def srv():
    """Default limits except a small per-request pixel budget (three 256 px photos fit, four don't)."""
    with serving(limits=ServerLimits(max_request_pixels=3 * 256 * 256)) as s:
        yield s


@pytest.fixture()
def client(srv):
    with srv.client() as c:
        yield c


def jpeg_claiming(width: int, height: int, target_bytes: int = 5500) -> bytes:
    """A real, noisy JPEG of about ``target_bytes`` whose frame header says ``width`` x ``height``."""
    rng = np.random.default_rng(7)
    side = 8
    while True:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        if len(buf.getvalue()) >= target_bytes:
            break
        side += 8
    return patch_jpeg_size(buf.getvalue(), width, height)


# -- defect 2: pixel budget per request, ratio rule, decode-time budget ------------------------
def test_small_jpeg_claiming_12000x12000_is_refused_from_its_header(client):
    bomb = jpeg_claiming(12000, 12000)
    assert 5000 <= len(bomb) <= 6500
    for route, files in (("/api/v1/jobs", {"files": ("b.jpg", bomb)}), ("/api/v1/anonymize", {"file": ("b.jpg", bomb)}),
                         ("/api/v1/render", {"file": ("b.jpg", bomb)})):
        data = {"regions": json.dumps([{"target": "face", "box": [0, 0, 10, 10]}])} if route.endswith("render") else {}
        r = client.post(route, files=files, data=data)
        body = assert_problem(r, 413)
        assert "pixels-per-byte rule" in body["detail"], body
        assert r.elapsed.total_seconds() < 2.0  # from the header: nothing was decoded
    # the same file at its real size is an ordinary photo
    r = client.post("/api/v1/anonymize", files={"file": ("ok.jpg", jpeg_claiming(512, 512, 20000))}, data={"options": json.dumps(FAST)})
    assert r.status_code == 200, r.text


def test_heif_headers_are_checked_before_any_decoder_is_loaded(tmp_path):
    """The API process checks an upload's header size before anything decodes it (with
    ``--redis`` nothing ever decodes there): HEIF must be readable by then too, or a HEIF
    bomb would pass the header checks and count 0 pixels against the request's budget."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    heic = tmp_path / "x.heic"
    Image.new("RGB", (80, 64), (90, 120, 150)).save(heic, "HEIF")
    code = ("import sys\n"
            "import veil.server.routes_jobs\n"
            "from veil.server.uploads import header_size\n"
            "assert 'veil.imageio.read' not in sys.modules\n"
            "print(header_size(open(sys.argv[1], 'rb').read()))\n")  # fmt: skip
    assert fresh_python(code, str(heic)).stdout.strip() == "(80, 64)"


def test_real_photos_pass_the_ratio_rule():
    """Every photo of the evaluation set, and the flattest valid files, stay well under the bounds."""
    from veil.imageio.limits import LOSSLESS_PIXELS_PER_BYTE, LOSSY_PIXELS_PER_BYTE, Limits

    lim = Limits(max_pixels_per_byte=LOSSY_PIXELS_PER_BYTE, max_pixels_per_byte_lossless=LOSSLESS_PIXELS_PER_BYTE)
    flat = Image.new("RGB", (2000, 2000), (128, 128, 128))
    for fmt, kw, sniffed in (("JPEG", {"quality": 1, "progressive": True}, "jpeg"), ("PNG", {"optimize": True}, "png"),
                             ("WEBP", {"quality": 1}, "webp"), ("WEBP", {"lossless": True}, "webp"),
                             ("TIFF", {"compression": "tiff_deflate"}, "tiff")):
        buf = io.BytesIO()
        flat.save(buf, fmt, **kw)
        lim.check_ratio(2000, 2000, len(buf.getvalue()), sniffed, buf.getvalue())
    shared = Path(__file__).resolve().parents[2] / "shared" / "eval"
    photos = sorted(shared.glob("*/images/**/*.jpg"))[:400]
    for p in photos:
        with Image.open(p) as im:
            lim.check_ratio(*im.size, p.stat().st_size, "jpeg")


def test_per_request_pixel_budget(client):
    r = client.post("/api/v1/jobs", files=photo_files(4), data={"options": json.dumps(FAST)})
    body = assert_problem(r, 413, "files[3]")
    assert "per-request pixel budget" in body["detail"]
    r = client.post("/api/v1/jobs", files=photo_files(3), data={"options": json.dumps(FAST)})
    assert r.status_code == 202, r.text
    assert wait_job(client, r.json()["id"])["status"] == "done"


def test_decode_time_budget():
    from veil.errors import ImageError
    from veil.imageio import Limits, load_image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)).save(buf, "PNG")
    load_image(buf.getvalue(), limits=Limits(max_decode_seconds=30))
    with pytest.raises(ImageError, match="decode-time budget"):
        load_image(buf.getvalue(), limits=Limits(max_decode_seconds=0.0))
    with serving(limits=ServerLimits(max_decode_seconds=0.0)) as s:
        with s.client() as c:
            body = assert_problem(c.post("/api/v1/anonymize", files={"file": ("a.png", buf.getvalue())}), 413)
            assert "decode-time budget" in body["detail"]
            r = c.post("/api/v1/jobs", files={"files": ("a.png", buf.getvalue())})
            assert r.status_code == 202
            done = wait_job(c, r.json()["id"])
            assert done["status"] == "failed" and "decode-time budget" in done["images"][0]["error"]


def test_image_limits_come_from_the_environment():
    cfg = ServerConfig.from_env({"VEIL_SERVER_MAX_REQUEST_PIXELS": "5000000", "VEIL_SERVER_MAX_PIXELS_PER_BYTE": "200",
                                 "VEIL_SERVER_MAX_DECODE_SECONDS": "2.5"})
    assert cfg.limits.max_request_pixels == 5_000_000
    lim = cfg.limits.image_limits()
    assert (lim.max_pixels_per_byte, lim.max_decode_seconds, lim.max_pixels) == (200, 2.5, 150_000_000)


# -- defect 3: malformed JSON and loose option types are 422 naming the field ---------------------
DEEP = "[" * 1000 + "]" * 1000
DEEP_OBJ = '{"a":' * 1000 + "1" + "}" * 1000
HUGE_INT = '{"strength": 1' + "0" * 5000 + "}"
BAD_OPTIONS = [
    (DEEP, "options"),
    (DEEP_OBJ, "options"),
    (HUGE_INT, "options"),
    ('{"strength": NaN}', "options"),
    ('{"per_target": ["face"]}', "options.per_target"),
    ('{"per_target": "face"}', "options.per_target"),
    ('{"per_target": {"face": "blur"}}', "options.per_target.face"),
    ('{"per_target": {"face": null}}', "options.per_target.face"),
    ('{"verify": "false"}', "options.verify"),
    ('{"hide_heads": "no"}', "options.hide_heads"),
    ('{"quality": true}', "options.quality"),
    ('{"feather": true}', "options.feather"),
    ('{"targets": "face"}', None),  # a comma-separated string stays valid (the CLI's form)
    ('{"targets": [1]}', "options.targets"),
    ('{"color": 255}', "options.color"),
    ('{"style": ["blur"]}', "options.style"),
]


@pytest.mark.parametrize("raw,field", BAD_OPTIONS, ids=range(len(BAD_OPTIONS)))
def test_malformed_options_are_422_naming_the_field(client, raw, field):
    if field is None:
        r = client.post("/api/v1/anonymize", files={"file": ("a.jpg", small_photo())},
                        data={"options": raw.replace("}", ', "preset": "fast"}')})
        assert r.status_code == 200, r.text
        return
    assert_problem(client.post("/api/v1/jobs", files=photo_files(1), data={"options": raw}), 422, field)
    r = client.post("/api/v1/anonymize", params={"options": raw}, content=small_photo(), headers={"content-type": "image/jpeg"})
    assert_problem(r, 422, field)
    regions = json.dumps([{"target": "face", "box": [0, 0, 10, 10]}])
    r = client.post("/api/v1/render", files={"file": ("a.jpg", small_photo())}, data={"options": raw, "regions": regions})
    assert_problem(r, 422, field)


@pytest.mark.parametrize("raw", [DEEP, DEEP_OBJ, '[{"target": "face", "box": [1' + "0" * 5000 + ', 0, 10, 10]}]',
                                 '[{"target": "face", "box": [0, 0, Infinity, 10]}]'])
def test_malformed_regions_are_422(client, raw):
    r = client.post("/api/v1/render", files={"file": ("a.jpg", small_photo())}, data={"regions": raw})
    assert_problem(r, 422, "regions")


def test_toml_and_cli_values_keep_working(tmp_path):
    from veil.pipeline.options import Options

    p = tmp_path / "preset.toml"
    p.write_text('targets = ["face", "plate"]\nverify = false\nquality = 80\nstrength = 55\nplate_style = "fill"\n'
                 '[per_target.face]\nstyle = "pixelate"\n')
    o = Options.from_toml(p)
    assert (o.targets, o.verify, o.quality, o.strength) == (("face", "plate"), False, 80, 55)
    assert o.style_for("plate").style == "fill" and o.style_for("face").style == "pixelate"
    o = Options.from_mapping({"targets": "face,plate", "keep_metadata": "icc,dpi", "hide_heads": False})
    assert o.targets == ("face", "plate") and o.keep_metadata == ("icc", "dpi") and o.hide_heads is False
    assert Options.from_mapping(o.to_json()) == o


# -- defect 5: multipart without its closing boundary -----------------------------------------
def _parts(name: str, n: int) -> bytes:
    head = b'--XyZ\r\nContent-Disposition: form-data; name="%s"; filename="%d.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    return b"".join(head % (name.encode(), i) + small_photo() + b"\r\n" for i in range(n))


def test_multipart_without_closing_boundary_is_400(client):
    headers = {"content-type": "multipart/form-data; boundary=XyZ"}
    for route, body in (("/api/v1/jobs", _parts("files", 2)), ("/api/v1/anonymize", _parts("file", 1))):
        assert_problem(client.post(route, content=body, headers=headers), 400)
        assert_problem(client.post(route, content=body[:-2], headers=headers), 400)
        assert_problem(client.post(route, content=body + b"--XyZ", headers=headers), 400)
    r = client.post("/api/v1/jobs", content=_parts("files", 2) + b"--XyZ--\r\n", headers=headers)  # closed: fine
    assert r.status_code == 202 and r.json()["image_count"] == 2


# -- defect 8: tenancy -----------------------------------------------------------------------
def test_anonymous_jobs_belong_to_anonymous_only():
    with serving() as s:  # loopback, no key yet: open local mode
        with s.client() as anon:
            r = anon.post("/api/v1/jobs", files=photo_files(1), data={"options": json.dumps(FAST)})
            assert r.status_code == 202
            job = r.json()["id"]
            wait_job(anon, job)
            created = s.state.keys.create("later")  # keys are now required
            with s.client(Authorization=f"Bearer {created.token}") as keyed:
                assert_problem(keyed.get(f"/api/v1/jobs/{job}"), 404)
                assert_problem(keyed.get(f"/api/v1/jobs/{job}/images/0"), 404)
                assert_problem(keyed.get(f"/api/v1/jobs/{job}/archive"), 404)
                assert_problem(keyed.delete(f"/api/v1/jobs/{job}/images/0"), 404)
                assert_problem(keyed.delete(f"/api/v1/jobs/{job}"), 404)
            assert_problem(anon.get(f"/api/v1/jobs/{job}"), 401)
            assert s.state.store.one("SELECT id FROM jobs WHERE id = ?", (job,)) is not None  # untouched


def test_no_require_keys_keeps_anonymous_jobs_from_keys():
    with serving(require_keys=False) as s:
        created = s.state.keys.create("k")
        with s.client() as anon, s.client(**{"X-API-Key": created.token}) as keyed:
            job = anon.post("/api/v1/jobs", files=photo_files(1), data={"options": json.dumps(FAST)}).json()["id"]
            mine = keyed.post("/api/v1/jobs", files=photo_files(1), data={"options": json.dumps(FAST)}).json()["id"]
            wait_job(anon, job), wait_job(keyed, mine)
            assert_problem(keyed.get(f"/api/v1/jobs/{job}"), 404)
            assert_problem(keyed.delete(f"/api/v1/jobs/{job}"), 404)
            assert_problem(anon.get(f"/api/v1/jobs/{mine}"), 404)
            assert anon.get(f"/api/v1/jobs/{job}").status_code == 200
            assert keyed.get(f"/api/v1/jobs/{mine}").status_code == 200


def test_health_without_a_key_says_only_that_the_server_is_up():
    with serving(require_keys=True) as s:
        created = s.state.keys.create("k")
        with s.client() as c:
            public = c.get("/api/v1/health").json()
            assert set(public) == {"status", "auth", "pipeline"} and public["auth"] == "keys"
        with s.client(Authorization="Bearer veil_wrong") as c:
            assert set(c.get("/api/v1/health").json()) == {"status", "auth", "pipeline"}
        with s.client(Authorization=f"Bearer {created.token}") as c:
            full = c.get("/api/v1/health").json()
            assert {"queue", "held_bytes", "limits", "ttl_seconds"} <= set(full)
            assert full["limits"]["max_request_pixels"] == 1_000_000_000


def test_lost_jobs_are_given_back_to_the_quota(tmp_path):
    """Unfinished jobs of an earlier process are gone at restart (404), their images uncharged."""
    from veil.server.app import build_state
    from veil.server.keys import add_usage

    config = ServerConfig(data_dir=tmp_path, workers=1)
    state = build_state(config)
    key = state.keys.create("q", quota_per_day=10).key
    with state.store.transaction() as conn:
        add_usage(conn, key.id, 7)
        for job, status, n in (("j_lost", "queued", 3), ("j_running", "processing", 2), ("j_done", "done", 2)):
            conn.execute("INSERT INTO jobs (id, key_id, status, created, expires_at, n_images, options) VALUES (?,?,?,?,?,?,?)",
                         (job, key.id, status, __import__("time").time(), 1e12, n, "{}"))
    state.store.close()
    state = build_state(config)  # a new process on the same data directory
    state.jobs.start()
    try:
        assert state.keys.used_today(key.id) == 2  # only the finished job's images stay charged
        assert state.store.query("SELECT id FROM jobs") == []
    finally:
        state.jobs.stop()
        state.store.close()


# -- defect 9: webhook addresses, security headers, the 415 message, --report errors ----------
def test_webhook_address_rules():
    from veil.server.webhooks import WebhookURLError, check_callback_url

    def ok(url: str, local: bool) -> bool:
        try:
            check_callback_url(url, allow_private=False, allow_local=local)
            return True
        except WebhookURLError:
            return False

    assert ok("http://[::1]:9000/hook", True) and not ok("http://[::1]:9000/hook", False)
    for wrapped in ("2002:a9fe:a9fe::", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "64:ff9b:1::a9fe:a9fe",
                    "2001:0:4136:e378:8000:63bf:5601:5601"):  # 6to4, mapped, NAT64 (both), Teredo: all 169.254.169.254
        assert not ok(f"http://[{wrapped}]/", True), wrapped
    assert not ok("http://[2002:c0a8:101::]/", False)  # 6to4 of 192.168.1.1 on a public server
    assert ok("http://[2002:808:808::]/", False) and ok("http://[64:ff9b::808:808]/", False)  # public IPv4 inside


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_webhook_to_ipv6_loopback_on_a_loopback_server(client):
    r = client.post("/api/v1/jobs", files=photo_files(1),
                    data={"options": json.dumps(FAST), "callback_url": "http://[2002:a9fe:a9fe::]/hook"})
    assert_problem(r, 422, "callback_url")
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    import http.server

    class V6(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6

    recv = Receiver()
    recv.httpd.shutdown()
    recv.httpd.server_close()
    recv.httpd = V6(("::1", 0), recv.httpd.RequestHandlerClass)
    __import__("threading").Thread(target=recv.httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://[::1]:{recv.httpd.server_address[1]}/hook"
        r = client.post("/api/v1/jobs", files=photo_files(1), data={"options": json.dumps(FAST), "callback_url": url})
        assert r.status_code == 202, r.text
        assert recv.event.wait(60) and recv.json()["event"] == "job.done"
    finally:
        recv.close()


def test_security_headers_on_page_api_and_errors(client):
    for path in ("/", "/app.js", "/api/v1/health", "/api/v1/jobs/j_nope", "/openapi.json"):
        r = client.get(path)
        h = r.headers
        assert h["x-content-type-options"] == "nosniff", path
        assert h["x-frame-options"] == "DENY" and h["referrer-policy"] == "no-referrer", path
        csp = h["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp, path
    assert "frame-ancestors 'none'" in client.get("/docs").headers["content-security-policy"]


def test_415_lists_bmp(client):
    body = assert_problem(client.post("/api/v1/anonymize", files={"file": ("x.jpg", b"plain text, no image")}), 415)
    assert "BMP" in body["detail"] and "BMP" in body["errors"][0]["message"]


def test_report_on_an_unwritable_location_is_one_clear_line(tmp_path):
    import typer
    from typer.testing import CliRunner

    from veil.cli.anonymize import anonymize

    app = typer.Typer(pretty_exceptions_enable=False)
    app.command()(anonymize)
    photo = tmp_path / "a.jpg"
    photo.write_bytes(small_photo())
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    for target in (blocker / "run.json", tmp_path):  # parent is a file; the path is a folder
        res = CliRunner().invoke(app, [str(photo), "-o", str(tmp_path / "out"), "--preset", "fast", "-t", "face",
                                       "--report", str(target)])
        assert res.exit_code == 1, res.output
        assert isinstance(res.exception, SystemExit), res.exception  # no traceback
        lines = [ln for ln in res.output.splitlines() if "cannot write the report" in ln]
        assert len(lines) == 1 and "Traceback" not in res.output, res.output
