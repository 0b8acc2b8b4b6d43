"""Nothing of an upload touches disk: originals and results stay in memory."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from pathlib import Path

from test_server_support import (
    FAST,
    astronaut_jpeg,
    shared_main_server,
    wait_job,
)


def _unique_photo() -> bytes:
    """The astronaut with a random block in its last rows: its bytes exist nowhere else."""
    import io

    import numpy as np
    from PIL import Image

    arr = np.asarray(Image.open(io.BytesIO(astronaut_jpeg())).convert("RGB")).copy()
    arr[-96:, -96:] = np.random.default_rng().integers(0, 256, (96, 96, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _files_since(roots: list[Path], since: float) -> list[Path]:
    out = []
    for root in roots:
        for dirpath, _, names in os.walk(root, onerror=lambda e: None):
            for name in names:
                p = Path(dirpath) / name
                try:
                    st = p.stat()
                except OSError:
                    continue
                if st.st_mtime >= since - 1 and st.st_size < 512 * 1024 * 1024 and p.is_file():
                    out.append(p)
    return out


def _scan(roots: list[Path], since: float, needles: list[bytes]) -> list[str]:
    hits = []
    for p in _files_since(roots, since):
        try:
            data = p.read_bytes()
        except OSError:
            continue
        for n in needles:
            if n in data:
                hits.append(f"{p} contains {n[:8].hex()}…")
    return hits


def test_uploads_and_results_never_touch_disk():
    srv = shared_main_server()
    data_dir = srv.state.config.data_dir
    roots = [data_dir, Path(tempfile.gettempdir())]
    start = time.time()
    # > 1 MB per part, so Starlette's UploadFile would have spooled it to a temp file
    marker = secrets.token_bytes(48)
    jpeg = _unique_photo()
    upload = jpeg + marker + secrets.token_bytes(1_500_000)
    needles = [marker, jpeg[-3000:-2936], upload[-64:]]
    # the scanner itself works: a planted copy is found
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "planted").write_bytes(b"xx" + marker + b"yy")
        assert _scan([Path(d)], start, [marker])

    with srv.client() as c:
        r = c.post(
            "/api/v1/jobs",
            files=[("files", (f"secret-name-{i}.jpg", upload, "image/jpeg")) for i in range(3)],
            data={"options": json.dumps(FAST)},
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        scans = 0
        while c.get(f"/api/v1/jobs/{job_id}").json()["status"] in ("queued", "processing"):
            assert not _scan(roots, start, needles)
            scans += 1
            time.sleep(0.05)
        done = wait_job(c, job_id)
        assert done["status"] == "done", done
        result = c.get(f"/api/v1/jobs/{job_id}/images/0").content
        needles += [result[-3000:-2936], b"secret-name"]
        assert not _scan(roots, start, needles)
        c.delete(f"/api/v1/jobs/{job_id}")

    # the data dir holds only the database, the webhook secret and the (video) spool
    # directory, empty here, all private
    names = {p.name for p in data_dir.iterdir()}
    assert names <= {"veil-server.sqlite3", "veil-server.sqlite3-wal", "veil-server.sqlite3-shm", "webhook_secret", "spool"}
    assert not list((data_dir / "spool").iterdir())  # photos are never spooled
    assert (data_dir.stat().st_mode & 0o777) == 0o700
    for p in data_dir.iterdir():
        assert (p.stat().st_mode & 0o077) == 0, p


def test_multipart_parsing_never_spools(monkeypatch):
    """Belt and braces: fail if anything asks for a temp file while an upload is parsed."""
    import tempfile as tf

    import starlette.formparsers

    def boom(*a, **k):
        raise AssertionError("an upload was about to be spooled to disk")

    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", boom)
    monkeypatch.setattr(tf, "SpooledTemporaryFile", boom)
    monkeypatch.setattr(tf, "NamedTemporaryFile", boom)
    monkeypatch.setattr(tf, "TemporaryFile", boom)
    srv = shared_main_server()
    big = astronaut_jpeg() + secrets.token_bytes(2_000_000)
    with srv.client() as c:
        r = c.post("/api/v1/jobs", files=[("files", ("a.jpg", big, "image/jpeg"))], data={"options": json.dumps(FAST)})
        assert r.status_code == 202, r.text
        assert wait_job(c, r.json()["id"])["status"] == "done"
        r = c.post("/api/v1/anonymize", files={"file": ("a.jpg", big)}, data={"options": json.dumps(FAST)})
        assert r.status_code == 200, r.text
