"""The web page end to end: headless Chromium drives the real page on a real veil server.

The server is the real app (``create_app``) under uvicorn on a free 127.0.0.1 port, with
the real pipeline, and the photos are real (the ``photos`` fixture). Needs Debian's
``chromium`` (``/usr/bin/chromium``) and ``playwright`` from PyPI; no browser download.
Screenshots of the main states land in ``test-artifacts/web/``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

from veil.server.app import create_app
from veil.server.config import ServerConfig, ServerLimits

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "web"
CHROMIUM = os.environ.get("VEIL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
MAX_FILE_BYTES = 3 * 1024 * 1024

#: Boxes (x1, y1, x2, y2) well inside the faces of the sample photos, and areas far from
#: anything the default targets (faces, plates) would hide.
FACE = {"astronaut": (200, 80, 250, 160), "grace_hopper": (215, 175, 320, 295), "zidane": (940, 130, 1020, 250)}
PLAIN = {"astronaut": (420, 20, 500, 60), "grace_hopper": (20, 20, 140, 110)}
#: A rectangle to hide by hand on grace_hopper (background, nothing detected there).
MANUAL = (20, 20, 140, 110)


# -- server -------------------------------------------------------------------------------
class LiveServer:
    """The real veil app under uvicorn in a daemon thread, on a pre-bound free port."""

    def __init__(self, config: ServerConfig):
        self.app = create_app(config)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "veil server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()

    @property
    def state(self) -> Any:
        return self.app.state.veil

    def get(self, path: str, **headers: str) -> httpx.Response:
        return httpx.get(self.url + path, headers=headers, timeout=30, trust_env=False)


def _config(**kw: Any) -> ServerConfig:
    return ServerConfig(
        data_dir=Path(tempfile.mkdtemp(prefix="veil-web-test-")),
        workers=2,
        limits=ServerLimits(max_file_bytes=MAX_FILE_BYTES, max_request_bytes=8 * 1024 * 1024),
        **kw,
    )


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with LiveServer(_config()) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class PageWatch:
    """Uncaught page errors and every URL the page asked for."""

    def __init__(self, page: Page):
        self.errors: list[str] = []
        self.requests: list[tuple[str, str]] = []
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append((r.method, r.url)))


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    pg.watch = PageWatch(pg)  # type: ignore[attr-defined]
    yield pg
    ctx.close()


# -- helpers --------------------------------------------------------------------------------
def shot(page: Page, name: str, **kw: Any) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), **kw)


def drop_files(page: Page, selector: str, files: list[tuple[str, bytes, str]]) -> None:
    """A synthetic drop: a DataTransfer built in the page from the files' bytes."""
    payload = [{"name": n, "type": t, "b64": base64.b64encode(d).decode()} for n, d, t in files]
    page.evaluate(
        """([selector, files]) => {
            const dt = new DataTransfer();
            for (const f of files) {
                const bin = atob(f.b64);
                const bytes = new Uint8Array(bin.length);
                for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
                dt.items.add(new File([bytes], f.name, { type: f.type }));
            }
            const zone = document.querySelector(selector);
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: dt }));
            }
        }""",
        [selector, payload],
    )


def card(page: Page, name: str):
    return page.locator("#grid .card").filter(has=page.locator(".card-title", has_text=name))


def download(page: Page, trigger: Any) -> tuple[bytes, str]:
    with page.expect_download() as info:
        trigger()
    dl = info.value
    path = dl.path()
    assert path, dl.failure()
    return Path(path).read_bytes(), dl.suggested_filename


def rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def region_diff(a: np.ndarray, b: np.ndarray, box: tuple[int, int, int, int]) -> float:
    x1, y1, x2, y2 = box
    return float(np.abs(a[y1:y2, x1:x2] - b[y1:y2, x1:x2]).mean())


def drag_rect(page: Page, box: tuple[int, int, int, int], size: tuple[int, int]) -> None:
    """Drag on the large view from image pixel (x1, y1) to (x2, y2)."""
    r = page.locator("#img-before").bounding_box()
    assert r and r["width"] > 0
    w, h = size

    def at(x: float, y: float) -> tuple[float, float]:
        return r["x"] + x / w * r["width"], r["y"] + y / h * r["height"]

    page.mouse.move(*at(box[0], box[1]))
    page.mouse.down()
    for t in (0.3, 0.6, 1.0):
        page.mouse.move(*at(box[0] + (box[2] - box[0]) * t, box[1] + (box[3] - box[1]) * t))
    page.mouse.up()


def job_ids(page: Page) -> dict[str, str]:
    return dict(page.evaluate("window.veil.items.map(i => [i.name, i.jobId])"))


# -- tests -----------------------------------------------------------------------------------
def test_page_is_self_contained(server: LiveServer) -> None:
    r = server.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    html = r.text
    assert 'src="app.js"' in html and 'href="app.css"' in html
    # offline: nothing is loaded from anywhere else
    for asset in ("/", "/app.js", "/app.css", "/favicon.svg"):
        body = server.get(asset).text
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", body), asset
        assert "@import" not in body and "cdn" not in body.lower(), asset


def test_anonymize_compare_correct_download_delete(server: LiveServer, page: Page, photos: dict[str, Path]) -> None:
    originals = {k: photos[k].read_bytes() for k in ("astronaut", "grace_hopper", "zidane")}
    page.goto(server.url + "/")
    expect(page.locator("#server-state")).to_have_attribute("data-state", "ok")
    # defaults: faces and plates on, bodies off
    expect(page.locator('input[value="face"]')).to_be_checked()
    expect(page.locator('input[value="plate"]')).to_be_checked()
    expect(page.locator('input[value="person"]')).not_to_be_checked()
    shot(page, "01-start")

    # advanced settings: the fast preset keeps the test quick, and is remembered
    page.locator("#advanced summary").click()
    page.select_option("#opt-preset", "fast")
    page.locator("#opt-strength").fill("60")
    assert json.loads(page.evaluate("localStorage.getItem('veil.settings.v1')"))["preset"] == "fast"

    # wrong type and oversize are refused at once, without a request
    page.set_input_files(
        "#file-input",
        [
            {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"},
            {"name": "huge.jpg", "mimeType": "image/jpeg", "buffer": b"\xff\xd8" + b"\0" * (MAX_FILE_BYTES + 10)},
        ],
    )
    reject = page.locator("#reject-box")
    expect(reject).to_be_visible()
    expect(reject).to_contain_text("notes.txt")
    expect(reject).to_contain_text("huge.jpg")
    expect(reject).to_contain_text("limit")
    expect(page.locator("#queue .qrow")).to_have_count(0)

    # two photos and a fake JPEG by drop, one photo by the file picker
    drop_files(
        page,
        "#dropzone",
        [
            ("astronaut.jpg", originals["astronaut"], "image/jpeg"),
            ("grace_hopper.jpg", originals["grace_hopper"], "image/jpeg"),
            ("broken.jpg", b"this is a text file, not a photo\n" * 20, "image/jpeg"),
        ],
    )
    page.set_input_files("#file-input", str(photos["zidane"]))
    expect(page.locator("#queue .qrow")).to_have_count(4)
    expect(page.locator("#run")).to_have_text("Anonymize 4 photos")
    shot(page, "02-added")

    page.locator("#run").click()
    expect(page.locator("#overall")).to_be_visible()
    shot(page, "03-progress")

    # three results with counts; the broken file fails on its own
    grid = page.locator("#grid .card")
    expect(grid).to_have_count(3, timeout=120_000)
    bad = page.locator("#queue .qrow", has_text="broken.jpg")
    expect(bad).to_have_attribute("data-state", "failed")
    expect(bad.locator(".qstatus")).to_contain_text(re.compile(r"not a supported image|not an image", re.IGNORECASE))
    expect(page.locator("#overall-text")).to_contain_text("3 anonymized, 1 failed")
    for name in ("astronaut.jpg", "grace_hopper.jpg", "zidane.jpg"):
        c = card(page, name)
        expect(c).to_have_count(1)
        for target in ("face", "person", "plate"):
            expect(c.locator(f'.chip[data-target="{target}"]')).to_have_count(1)
        assert int(c.locator('.chip[data-target="face"]').get_attribute("data-count")) >= 1, name
    assert int(card(page, "zidane.jpg").locator('.chip[data-target="face"]').get_attribute("data-count")) >= 2
    expiry = page.locator("#expiry")
    expect(expiry).to_have_text(re.compile(r"Results are deleted from the server at ([A-Z][a-z]{2} \d{1,2} )?\d\d:\d\d"))
    shot(page, "04-results", full_page=True)

    # the large view compares the local original with the result
    card(page, "astronaut.jpg").locator(".thumb").click()
    viewer = page.locator("#viewer")
    expect(viewer).to_be_visible()
    expect(page.locator("#viewer-title")).to_have_text("astronaut.jpg")
    before_src = page.locator("#img-before").get_attribute("src")
    after_src = page.locator("#img-after").get_attribute("src")
    assert before_src.startswith("blob:") and after_src.startswith("blob:") and before_src != after_src
    page.wait_for_function("document.getElementById('img-before').complete && document.getElementById('img-after').complete")
    # the File itself, not a copy from the server (the page's CSP has no connect-src blob:,
    # so the test asks the page's item for its object URL and File instead of fetching it)
    item = page.evaluate("(() => { const i = window.veil.items.find((x) => x.name === 'astronaut.jpg'); "
                         "return { url: i.beforeUrl, size: i.file.size }; })()")
    assert item == {"url": before_src, "size": len(originals["astronaut"])}
    page.locator("#compare").fill("80")
    assert page.evaluate("getComputedStyle(document.getElementById('stage')).getPropertyValue('--pos').trim()") == "80%"
    shot(page, "05-compare")
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()

    # download one: a new image whose face area changed
    data, fname = download(page, lambda: card(page, "astronaut.jpg").get_by_role("button", name="Download astronaut.jpg", exact=True).click())
    assert fname == "astronaut.anonymized.jpg"
    assert data != originals["astronaut"]
    orig, out = rgb(originals["astronaut"]), rgb(data)
    assert out.shape == orig.shape
    assert region_diff(orig, out, FACE["astronaut"]) > 8, "the face was not hidden"
    assert region_diff(orig, out, PLAIN["astronaut"]) < 6, "the background changed too much"

    # download everything as one ZIP
    zdata, zname = download(page, lambda: page.locator("#download-all").click())
    assert zname.endswith(".zip")
    with zipfile.ZipFile(io.BytesIO(zdata)) as zf:
        assert zf.testzip() is None
        names = sorted(zf.namelist())
        assert names == ["astronaut.anonymized.jpg", "grace_hopper.anonymized.jpg", "zidane.anonymized.jpg"]
        assert zf.read("astronaut.anonymized.jpg") == data
        for n in names:
            Image.open(io.BytesIO(zf.read(n))).verify()

    ids = job_ids(page)
    assert all(ids[n] for n in ("astronaut.jpg", "grace_hopper.jpg", "zidane.jpg")), ids

    # delete one: gone from the page and from the server
    card(page, "zidane.jpg").get_by_role("button", name="Delete zidane.jpg", exact=True).click()
    expect(grid).to_have_count(2)
    assert server.get(f"/api/v1/jobs/{ids['zidane.jpg']}").status_code == 404

    # correct one: hide a missed area by dragging a rectangle, then save
    gh_before, _ = download(page, lambda: card(page, "grace_hopper.jpg").get_by_role("button", name="Download grace_hopper.jpg", exact=True).click())
    card(page, "grace_hopper.jpg").get_by_role("button", name="View grace_hopper.jpg", exact=True).click()
    expect(viewer).to_be_visible()
    page.locator("#mode-edit").click()
    regions = page.locator("#regions .region")
    expect(regions.first).to_be_visible()
    assert page.locator('#regions .region[data-target="face"]').count() >= 1
    page.wait_for_function("document.getElementById('img-before').naturalWidth > 0")
    drag_rect(page, MANUAL, (512, 600))
    expect(page.locator("#regions .region-added")).to_have_count(1)
    shot(page, "06-correct")
    page.locator("#edit-save").click()
    expect(page.locator("#viewer-status")).to_contain_text("Corrections saved", timeout=60_000)
    expect(page.locator("#stage")).to_have_attribute("data-mode", "compare")
    page.locator("#compare").fill("0")
    shot(page, "07-corrected")
    gh_fixed, _ = download(page, lambda: page.locator("#viewer-download").click())
    o, a, b = rgb(originals["grace_hopper"]), rgb(gh_before), rgb(gh_fixed)
    assert region_diff(a, b, MANUAL) > 8, "the hand-drawn area was not hidden"
    assert region_diff(o, b, MANUAL) > 8
    assert region_diff(o, b, FACE["grace_hopper"]) > 8, "the detected face must stay hidden"

    # un-hide the face by clicking its area: that part of the photo comes back
    page.locator("#mode-edit").click()
    face_region = page.locator('#regions .region[data-target="face"]').first
    expect(face_region).to_be_visible()
    face_region.click()
    expect(face_region).to_have_attribute("data-state", "shown")
    page.locator("#edit-save").click()
    expect(page.locator("#viewer-status")).to_contain_text("Corrections saved", timeout=60_000)
    gh_shown, _ = download(page, lambda: page.locator("#viewer-download").click())
    c = rgb(gh_shown)
    assert region_diff(o, c, FACE["grace_hopper"]) < 6, "the un-hidden face should look like the original"
    assert region_diff(o, c, MANUAL) > 8, "the hand-drawn area must stay hidden"
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    expect(card(page, "grace_hopper.jpg").locator(".badge")).to_be_visible()

    # the ZIP now carries the corrected photo
    zdata, _ = download(page, lambda: page.locator("#download-all").click())
    with zipfile.ZipFile(io.BytesIO(zdata)) as zf:
        assert sorted(zf.namelist()) == ["astronaut.anonymized.jpg", "grace_hopper.anonymized.jpg"]
        assert zf.read("grace_hopper.anonymized.jpg") == gh_shown

    # phone-sized screen: one column, two-up grid
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "08-phone", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})

    # delete all
    page.locator("#delete-all").click()
    expect(grid).to_have_count(0)
    expect(page.locator("#results")).to_be_hidden()
    for name in ("astronaut.jpg", "grace_hopper.jpg"):
        assert server.get(f"/api/v1/jobs/{ids[name]}").status_code == 404, name

    # settings survive a reload; results do not
    page.reload()
    expect(page.locator("#opt-preset")).to_have_value("fast")
    expect(page.locator("#opt-strength")).to_have_value("60")
    expect(page.locator("#grid .card")).to_have_count(0)

    # everything came from this server: no CDN, and the original was never fetched back
    hosts = {re.sub(r"^(\w+://[^/]+).*$", r"\1", url) for _, url in page.watch.requests if not url.startswith(("blob:", "data:"))}
    assert hosts == {server.url}, hosts
    gets = [u for m, u in page.watch.requests if m == "GET" and "/api/v1/" in u]
    assert all(re.search(r"/api/v1/(health|formats|options|jobs/[\w-]+(/images/\d+)?)$", u) for u in gets), gets
    assert not page.watch.errors, page.watch.errors


def test_page_takes_the_servers_formats_and_options(server: LiveServer, page: Page, photos: dict[str, Path]) -> None:
    """The page restates no format and no option: a TIFF the server takes is taken (and
    previewed as JPEG), and the controls' ranges, defaults and help are the API's."""
    listed = {o["name"]: o for o in server.get("/api/v1/options").json()["options"]}
    labels = [f["label"] for f in server.get("/api/v1/formats").json()["formats"]]
    page.goto(server.url + "/")
    strength = page.locator("#opt-strength")
    expect(strength).to_have_value(str(listed["strength"]["default"]))
    assert strength.get_attribute("max") == str(listed["strength"]["max"])
    assert listed["strength"]["help"] in (page.locator("#opt-strength").evaluate(
        "e => e.closest('[title]') ? e.closest('[title]').title : ''"))
    styles = page.locator("#opt-style option").evaluate_all("os => os.map(o => o.value)")
    assert styles == listed["style"]["choices"]
    accept = page.locator("#file-input").get_attribute("accept") or ""
    assert ".tif" in accept and ".tiff" in accept and "image/heic" in accept and "image/heif" in accept
    tiff = io.BytesIO()
    Image.open(photos["zidane"]).convert("RGB").resize((320, 180)).save(tiff, "TIFF")
    page.set_input_files("#file-input", [{"name": "scan.tif", "mimeType": "image/tiff", "buffer": tiff.getvalue()},
                                         {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    expect(page.locator("#queue .qrow")).to_have_count(1)
    reject = page.locator("#reject-box")
    expect(reject).to_contain_text("notes.txt")
    for label in ("TIFF", "BMP", "HEIC", "AVI"):
        assert label in labels
        expect(reject).to_contain_text(label)
    page.locator("#run").click()
    result = card(page, "scan.tif")
    expect(result).to_be_visible(timeout=120_000)
    # previewed as JPEG: the result the page holds is one every browser shows
    expect(result.locator("img").first).to_have_attribute("src", re.compile(r"^blob:"), timeout=60_000)
    assert page.evaluate("window.veil.items[0].blob && window.veil.items[0].blob.type") == "image/jpeg"
    assert not page.watch.errors, page.watch.errors


def test_keyboard_and_screen_reader_basics(server: LiveServer, page: Page) -> None:
    page.goto(server.url + "/")
    # the file picker is a real button reachable by Tab, and live regions exist
    page.keyboard.press("Tab")  # skip link
    page.keyboard.press("Tab")  # brand
    for _ in range(5):
        if page.evaluate("document.activeElement.id") == "pick-files":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "pick-files"
    assert page.evaluate("getComputedStyle(document.activeElement).boxShadow") != "none"  # visible focus
    assert page.locator("[aria-live]").count() >= 2
    for sel in ("#opt-style", "#opt-shape", "#opt-strength", "#opt-feather", "#opt-preset", "#compare"):
        assert page.evaluate(
            "s => { const e = document.querySelector(s); return !!(e.labels && e.labels.length) || e.hasAttribute('aria-label'); }",
            sel,
        ), sel
    assert not page.watch.errors, page.watch.errors


def test_api_key_prompt_and_expiry(browser: Browser, photos: dict[str, Path]) -> None:
    with LiveServer(_config(require_keys=True, ttl=6)) as srv:
        key = srv.state.keys.create("web-test").token
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        page = ctx.new_page()
        page.set_default_timeout(30_000)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            page.goto(srv.url + "/")
            dialog = page.locator("#key-dialog")
            expect(dialog).to_be_visible()  # health says keys are required
            shot(page, "09-api-key")
            page.locator("#key-input").fill("veil_wrong_key")
            page.locator("#key-submit").click()
            expect(dialog).to_be_hidden()
            assert page.evaluate("sessionStorage.getItem('veil.apiKey')") == "veil_wrong_key"

            page.set_input_files("#file-input", str(photos["astronaut"]))
            page.locator("#advanced summary").click()
            page.select_option("#opt-preset", "fast")
            page.locator("#run").click()
            # the wrong key is refused (401): the page asks again
            expect(dialog).to_be_visible()
            expect(page.locator("#key-message")).to_contain_text("not accepted")
            page.locator("#key-input").fill(key)
            page.locator("#key-submit").click()
            expect(page.locator("#grid .card")).to_have_count(1, timeout=90_000)
            assert page.evaluate("sessionStorage.getItem('veil.apiKey')") == key
            assert key not in json.dumps(page.evaluate("Object.assign({}, localStorage)"))
            expect(page.locator("#server-state")).to_contain_text("key set")

            # results leave the page when they expire on the server
            expect(page.locator("#grid .card")).to_have_count(0, timeout=30_000)
            expect(page.locator("#results")).to_be_hidden()
            assert not errors, errors
        finally:
            ctx.close()


def test_video_progress_playback_before_after_download_delete(browser: Browser, photos: dict[str, Path]) -> None:
    """A video next to a photo, on a server that wants keys: frame progress while it runs,
    the result plays from the Range-capable download (through a short-lived link, since a
    <video> cannot send the key), the original plays beside it from the local file,
    corrections are refused for it, and download and delete work as for photos."""
    from video_clips import avi_clip, face_clip, frame_count

    clip = face_clip(3.0)
    with LiveServer(_config(require_keys=True)) as srv:
        key = srv.state.keys.create("web-video").token
        ctx = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        ctx.add_init_script(f"sessionStorage.setItem('veil.apiKey', {json.dumps(key)})")
        page = ctx.new_page()
        page.set_default_timeout(30_000)
        watch = PageWatch(page)
        try:
            page.goto(srv.url + "/")
            expect(page.locator("#server-state")).to_contain_text("key set")
            page.locator("#advanced summary").click()
            page.select_option("#opt-preset", "fast")
            page.set_input_files("#file-input", [
                {"name": "street.mp4", "mimeType": "video/mp4", "buffer": clip},
                {"name": "astronaut.jpg", "mimeType": "image/jpeg", "buffer": photos["astronaut"].read_bytes()},
                {"name": "old.avi", "mimeType": "video/x-msvideo", "buffer": avi_clip()},
            ])
            expect(page.locator("#run")).to_have_text("Anonymize 3 files")
            # every status text the video's row shows, as it changes
            page.evaluate("""() => {
                window.__statuses = [];
                new MutationObserver(() => {
                    const s = document.querySelector('#queue .qrow .qstatus');
                    if (s && window.__statuses.at(-1) !== s.textContent) window.__statuses.push(s.textContent);
                }).observe(document.getElementById('queue'), { subtree: true, childList: true, characterData: true });
            }""")
            page.locator("#run").click()
            page.locator("#queue .qrow", has_text="frame").first.wait_for(timeout=60_000)
            shot(page, "10-video-progress")
            c = card(page, "street.mp4")
            expect(c).to_have_count(1, timeout=120_000)
            expect(page.locator("#grid .card")).to_have_count(3, timeout=60_000)
            shot(page, "11-video-results", full_page=True)
            statuses = page.evaluate("window.__statuses")
            n = frame_count(clip)
            frames = [s for s in statuses if re.search(rf"frame \d+ of {n}$", s)]
            assert frames, statuses  # progress per video: frames done of total
            assert int(c.locator('.chip[data-target="face"]').get_attribute("data-count")) >= 1

            # the card's player and the viewer's play the result through a link, not a blob
            thumb_src = c.locator("video").get_attribute("src")
            assert "/images/0?token=" in thumb_src and key not in thumb_src
            c.locator(".thumb").click()
            expect(page.locator("#vstage")).to_be_visible()
            expect(page.locator("#stage")).to_be_hidden()
            expect(page.locator("#video-note")).to_contain_text("photos only")
            expect(page.locator("#mode-edit")).to_be_disabled()
            assert page.locator("#vid-before").get_attribute("src").startswith("blob:")  # the local file
            assert "?token=" in page.locator("#vid-after").get_attribute("src")  # the server's download
            page.wait_for_function("() => document.getElementById('vid-after').readyState >= 2", timeout=30_000)
            page.evaluate("document.getElementById('vid-after').muted = true")
            page.evaluate("document.getElementById('vid-after').play()")
            page.wait_for_function("() => document.getElementById('vid-after').currentTime > 0.3", timeout=30_000)
            page.wait_for_function("() => !document.getElementById('vid-before').paused", timeout=10_000)  # it follows
            assert page.evaluate("document.getElementById('vid-after').videoWidth") == 320
            ranged = [u for m, u in watch.requests if "/images/0?token=" in u]
            assert ranged, watch.requests  # the <video> fetched the server's download itself
            shot(page, "12-video-compare")
            page.keyboard.press("Escape")

            # an AVI: the browser can't play the original, the result (MP4) plays, the page says so
            card(page, "old.avi").locator(".thumb").click()
            expect(page.locator("#video-note")).to_contain_text("can't play the original")
            expect(page.locator("#vid-before")).to_be_hidden()
            page.wait_for_function("() => document.getElementById('vid-after').readyState >= 2", timeout=30_000)
            page.keyboard.press("Escape")

            data, fname = download(page, lambda: c.get_by_role("button", name="Download street.mp4", exact=True).click())
            assert fname == "street.anonymized.mp4"
            assert frame_count(data) == n and data != clip
            job = dict(page.evaluate("window.veil.items.map(i => [i.name, i.jobId])"))["street.mp4"]
            c.get_by_role("button", name="Delete street.mp4").click()
            expect(c).to_have_count(0)
            deadline = time.monotonic() + 10
            while srv.get(f"/api/v1/jobs/{job}", authorization=f"Bearer {key}").status_code != 404:
                assert time.monotonic() < deadline, "the video's job was not deleted on the server"
                time.sleep(0.1)
            spool = srv.state.config.data_dir / "spool"
            assert len(list(spool.glob("*.spool"))) == 1  # street.mp4's result shredded, old.avi's left
            card(page, "old.avi").get_by_role("button", name="Delete old.avi").click()
            deadline = time.monotonic() + 10
            while list(spool.glob("*.spool")):
                assert time.monotonic() < deadline, "old.avi's result was not shredded"
                time.sleep(0.1)
            assert not watch.errors, watch.errors
        finally:
            ctx.close()
