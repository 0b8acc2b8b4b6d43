"""Shared helpers for the server tests (no tests here).

Real servers: uvicorn in a thread on a pre-bound 127.0.0.1 socket, real httpx clients,
and always the real pipeline (``veil.pipeline.core.anonymize_bytes``) on real photos.
The main server is started once per test session; servers with a special configuration
(one worker, short TTL, keys required...) are cheap to start because the detection
engine is cached per process, so models load once per session whichever server runs.
Behaviour that needs a busy worker gets one with real work: :func:`occupy_worker`.
"""

from __future__ import annotations

import atexit
import io
import json
import socket
import struct
import tempfile
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from veil.server.app import create_app
from veil.server.config import ServerConfig, ServerLimits

#: Options that keep real-pipeline tests quick.
FAST = {"preset": "fast"}
#: Options of the job that keeps a worker busy (many full-size photos). The fast preset
#: keeps each image short, so freeing the worker (which waits for the image in progress)
#: is quick, while the number of images keeps the worker busy for long.
BUSY = {"preset": "fast"}


# -- servers ------------------------------------------------------------------------------
class ServerThread:
    """A real uvicorn server in a daemon thread, bound to 127.0.0.1 on a free port."""

    def __init__(self, app: Any):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def state(self) -> Any:
        return self.app.state.veil

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, trust_env=False)


def start_server(config: ServerConfig) -> ServerThread:
    """A real server running the real pipeline (``create_app``'s default)."""
    return ServerThread(create_app(config)).start()


_SHARED: dict[str, ServerThread] = {}
_SHARED_LOCK = threading.Lock()


def shared_main_server() -> ServerThread:
    """One real-pipeline server for the whole session (models load once)."""
    with _SHARED_LOCK:
        if "main" not in _SHARED:
            data_dir = Path(tempfile.mkdtemp(prefix="veil-server-test-"))
            config = ServerConfig(
                data_dir=data_dir,
                workers=2,
                queue_size=16,
                limits=ServerLimits(
                    max_request_bytes=24 * 1024 * 1024,
                    max_file_bytes=8 * 1024 * 1024,
                    max_images_per_job=8,
                    max_pixels=50_000_000,
                ),
            )
            srv = start_server(config)
            _SHARED["main"] = srv
            atexit.register(srv.stop)
        return _SHARED["main"]


def wait_job(client: httpx.Client, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/api/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in ("done", "failed"):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {body['status']} after {timeout} s")
        time.sleep(0.05)


def assert_problem(r: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers["content-type"]
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"] and "type" in body
    if field is not None:
        fields = [e["field"] for e in body.get("errors", [])]
        assert any(f == field or (f or "").startswith(field) for f in fields), body
    return body


# -- images -----------------------------------------------------------------------------------
_CACHE: dict[str, bytes] = {}


def astronaut_jpeg(size: int | None = None) -> bytes:
    key = f"astronaut{size}"
    if key not in _CACHE:
        from PIL import Image
        from skimage import data

        im = Image.fromarray(data.astronaut())
        if size:
            im = im.resize((size, size))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        _CACHE[key] = buf.getvalue()
    return _CACHE[key]


def grace_hopper_jpeg() -> bytes:
    """matplotlib's grace_hopper.jpg (matplotlib is a test dependency: no skip)."""
    if "grace" not in _CACHE:
        from matplotlib import cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            _CACHE["grace"] = f.read()
    return _CACHE["grace"]


def small_photo() -> bytes:
    """The astronaut downscaled to 256 px (JPEG): one face, ~1 s with the fast preset."""
    return astronaut_jpeg(256)


def photo_files(n: int = 1, data: bytes | None = None, stem: str = "photo") -> list[tuple[str, Any]]:
    """``files`` parts for a job: ``n`` copies of ``data`` (default: :func:`small_photo`)."""
    data = small_photo() if data is None else data
    return [("files", (f"{stem}{i}.jpg", data, "image/jpeg")) for i in range(n)]


def submit(client: httpx.Client, n: int = 1, options: dict[str, Any] | None = None, **data: str) -> httpx.Response:
    """Submit ``n`` small real photos (fast preset unless ``options`` says otherwise)."""
    return client.post(
        "/api/v1/jobs", files=photo_files(n), data={"options": json.dumps(options or FAST), **data}
    )


# -- a busy worker, with real work --------------------------------------------------------------
def occupy_worker(client: httpx.Client, photos: dict[str, Path], n: int = 30, timeout: float = 60.0) -> str:
    """Submit a job of ``n`` full-size real photos (bus, zidane; ``BUSY`` preset) and return
    its id once a worker is processing it.

    On a one-worker server every later job waits in the queue behind it. Delete it
    (``DELETE /api/v1/jobs/{id}``) to free the worker: the image in progress completes,
    the rest are skipped, so the cost of releasing it is at most one image.
    """
    files = []
    for i in range(n):
        name = "bus" if i % 2 == 0 else "zidane"
        files.append(("files", (f"{name}{i}.jpg", photos[name].read_bytes(), "image/jpeg")))
    r = client.post("/api/v1/jobs", files=files, data={"options": json.dumps(BUSY)})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/api/v1/jobs/{job_id}").json()
        if body["status"] == "processing":
            return job_id
        assert body["status"] == "queued", f"the busy job is {body['status']}, expected it to be processing"
        assert time.monotonic() < deadline, "the busy job never started"
        time.sleep(0.02)


def png_bytes(data: bytes) -> bytes:
    """The same photo re-encoded as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def bomb_png(side: int = 60_000) -> bytes:
    """A tiny PNG whose header declares ``side`` x ``side`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (side + 1) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# -- a webhook receiver -------------------------------------------------------------------------
class Receiver:
    """A real HTTP server on 127.0.0.1 that records POSTs; fails the first ``fail_first``."""

    def __init__(self, fail_first: int = 0, status: int = 200):
        self.fail_first = fail_first
        self.status = status
        self.requests: list[dict[str, Any]] = []
        self.attempts = 0
        self.event = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.attempts += 1
                if outer.attempts <= outer.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                outer.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                                       "path": self.path})
                self.send_response(outer.status)
                self.end_headers()
                outer.event.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def json(self, i: int = 0) -> dict[str, Any]:
        return json.loads(self.requests[i]["body"])

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
