"""The API end to end on a real server running the real pipeline, with real photos."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image
from test_server_support import (
    FAST,
    assert_problem,
    astronaut_jpeg,
    bomb_png,
    grace_hopper_jpeg,
    shared_main_server,
    wait_job,
)


@pytest.fixture(scope="session")
def live():
    return shared_main_server()


@pytest.fixture()
def client(live):
    with live.client() as c:
        yield c


def _files(*items):
    return [("files", (name, data, "image/jpeg")) for name, data in items]


def test_job_life_cycle_zip_and_audit(live, client):
    astro, grace = astronaut_jpeg(), grace_hopper_jpeg()
    r = client.post(
        "/api/v1/jobs",
        files=_files(("photos/astronaut.jpg", astro), ("grace hopper.jpg", grace)),
        data={"options": json.dumps(FAST)},
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] in ("queued", "processing") and job["id"].startswith("j_")
    assert job["expires_at"] and job["created_at"]
    assert r.headers["location"] == job["links"]["self"] == f"/api/v1/jobs/{job['id']}"
    assert job["links"]["images"] == [f"/api/v1/jobs/{job['id']}/images/{i}" for i in range(2)]

    done = wait_job(client, job["id"])
    assert done["status"] == "done", done
    assert done["started_at"] and done["finished_at"]
    assert [i["index"] for i in done["images"]] == [0, 1]
    outputs = []
    for img, original in zip(done["images"], (astro, grace)):
        assert img["status"] == "done" and img["error"] is None
        assert img["detections"].get("face", 0) >= 1
        # the hidden regions come back (boxes only) so the web page can offer corrections
        faces = [g for g in img["regions"] if g["target"] == "face"]
        assert len(faces) == img["detections"]["face"] and all(len(g["box"]) == 4 for g in faces)
        r = client.get(img["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert r.content != original
        assert hashlib.sha256(r.content).hexdigest() == img["sha256"]
        assert Image.open(io.BytesIO(r.content)).size == Image.open(io.BytesIO(original)).size
        outputs.append(r.content)
    assert done["detections"].get("face", 0) >= 2

    r = client.get(f"/api/v1/jobs/{job['id']}/archive")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    assert zf.namelist() == ["0001.jpg", "0002.jpg"]
    assert [zf.read(n) for n in zf.namelist()] == outputs
    zf = zipfile.ZipFile(io.BytesIO(client.get(f"/api/v1/jobs/{job['id']}/archive?names=original").content))
    assert zf.namelist() == ["0001_astronaut.jpg", "0002_grace_hopper.jpg"]

    entry = next(iter(live.state.audit.entries(job_id=job["id"])))
    assert entry.event == "job" and entry.image_count == 2 and entry.key_id is None
    assert entry.outputs == [hashlib.sha256(o).hexdigest() for o in outputs]
    assert entry.options["preset"] == "fast" and entry.detections["face"] >= 2
    db = live.state.config.db_path
    stored = b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name.startswith(db.name))
    assert b"astronaut" not in stored and b"grace" not in stored  # no file names on disk

    assert client.delete(f"/api/v1/jobs/{job['id']}/images/0").status_code == 204
    assert_problem(client.get(f"/api/v1/jobs/{job['id']}/images/0"), 404)
    assert client.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert_problem(client.get(f"/api/v1/jobs/{job['id']}"), 404)
    assert_problem(client.get(f"/api/v1/jobs/{job['id']}/archive"), 404)


def test_bad_inputs_get_clear_4xx_and_server_keeps_serving(live, client):
    astro = astronaut_jpeg()
    truncated = astro[: len(astro) // 2]
    cases = [
        (_files(("bomb.png", bomb_png())), {}, 413, "files[0]"),
        (_files(("notes.jpg", b"just some text, not a photo\n" * 40)), {}, 415, "files[0]"),
        (_files(("a.jpg", astro), ("b.jpg", b"GIF89a" + b"\0" * 100)), {}, 415, "files[1]"),
        (_files(("big.jpg", astro + b"\0" * (9 * 1024 * 1024))), {}, 413, "files"),
        (_files(("a.jpg", astro)), {"options": "{not json"}, 422, "options"),
        (_files(("a.jpg", astro)), {"options": "[1, 2]"}, 422, "options"),
        (_files(("a.jpg", astro)), {"options": json.dumps({"strength": 900})}, 422, "options.strength"),
        (_files(("a.jpg", astro)), {"options": json.dumps({"colour": "red"})}, 422, "options.colour"),
        (_files(*[(f"{i}.jpg", astro) for i in range(9)]), {}, 413, "files"),
        ([("options", (None, b"{}"))], {}, 422, "files"),
        (_files(("a.jpg", astro)), {"surprise": "1"}, 422, "surprise"),
    ]
    for files, data, status, field in cases:
        r = client.post("/api/v1/jobs", files=files or None, data=data)
        assert_problem(r, status, field)
        assert client.get("/api/v1/health").status_code == 200
    # whole body above the request limit: refused from Content-Length, before reading it
    r = client.post("/api/v1/jobs", files=_files(*[(f"{i}.jpg", b"\xff\xd8\xff" + b"\0" * (7 * 1024 * 1024)) for i in range(4)]))
    assert_problem(r, 413)
    # not multipart at all
    assert_problem(client.post("/api/v1/jobs", content=b"{}", headers={"content-type": "application/json"}), 415)

    # a truncated JPEG passes the sniff, then fails in the pipeline: a failed image, not a crash
    r = client.post("/api/v1/jobs", files=_files(("t.jpg", truncated), ("ok.jpg", astro)), data={"options": json.dumps(FAST)})
    assert r.status_code == 202
    done = wait_job(client, r.json()["id"])
    assert done["status"] == "done"
    bad, good = done["images"]
    assert bad["status"] == "failed" and any(w in (bad["error"] or "").lower() for w in ("truncat", "corrupt"))
    assert good["status"] == "done"
    assert_problem(client.get(f"/api/v1/jobs/{done['id']}/images/0"), 409)
    assert zipfile.ZipFile(io.BytesIO(client.get(f"/api/v1/jobs/{done['id']}/archive").content)).namelist() == ["0002.jpg"]
    r = client.post("/api/v1/jobs", files=_files(("t.jpg", truncated)))
    assert wait_job(client, r.json()["id"])["status"] == "failed"

    # synchronous: the same inputs answer 4xx directly
    assert_problem(client.post("/api/v1/anonymize", files={"file": ("t.jpg", truncated)}), 422)
    assert_problem(client.post("/api/v1/anonymize", files={"file": ("b.png", bomb_png())}), 413)
    assert_problem(client.post("/api/v1/anonymize", files={"file": ("x.jpg", b"plain text")}), 415)
    assert_problem(client.post("/api/v1/anonymize", files={"file": ("a.jpg", astro)}, data={"options": "{"}), 422, "options")
    assert client.get("/api/v1/health").json()["status"] == "ok"


def test_anonymize_sync(client):
    grace = grace_hopper_jpeg()
    r = client.post("/api/v1/anonymize", files={"file": ("g.jpg", grace)}, data={"options": json.dumps(FAST)})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg" and r.content != grace
    report = json.loads(r.headers["x-veil-report"])
    assert report["detections"].get("face", 0) >= 1
    assert "person" not in report["detections"]  # default targets: faces and plates, people on request
    # raw body + options in the query string, asking for PNG out
    r = client.post(
        "/api/v1/anonymize",
        content=grace,
        params={"options": json.dumps({**FAST, "format": "png"})},
        headers={"content-type": "image/jpeg"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).format == "PNG"


def test_render_uses_exactly_the_given_regions(client):
    astro = astronaut_jpeg()
    box = [20, 20, 120, 120]
    r = client.post(
        "/api/v1/render",
        files={"file": ("a.jpg", astro)},
        data={"regions": json.dumps([{"target": "face", "box": box}]), "options": json.dumps({"format": "png"})},
    )
    assert r.status_code == 200, r.text
    assert json.loads(r.headers["x-veil-report"])["detections"].get("face") == 1
    out = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), dtype=np.int16)
    src = np.asarray(Image.open(io.BytesIO(astro)).convert("RGB"), dtype=np.int16)
    assert np.abs(out[30:110, 30:110] - src[30:110, 30:110]).mean() > 3  # masked
    # the astronaut's face and body were not detected and masked: far from the box, unchanged
    assert np.abs(out[200:500, 200:500] - src[200:500, 200:500]).mean() < 1
    bad = client.post(
        "/api/v1/render",
        files={"file": ("a.jpg", astro)},
        data={"regions": json.dumps([{"target": "cat", "box": [1, 2, 3, 4]}, {"target": "face", "box": [5, 5, 1, 1]}])},
    )
    body = assert_problem(bad, 422)
    assert {e["field"] for e in body["errors"]} == {"regions[0].target", "regions[1].box"}
    assert_problem(client.post("/api/v1/render", files={"file": ("a.jpg", astro)}, data={"regions": "nope"}), 422, "regions")


def test_health_models_and_docs(client):
    h = client.get("/api/v1/health").json()
    assert h["status"] == "ok" and h["auth"] == "open" and h["pipeline"] == "ready"
    models = client.get("/api/v1/models").json()["models"]
    assert models and all({"name", "license", "ready", "targets"} <= set(m) for m in models)
    spec = client.get("/openapi.json").json()
    for path in ("/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/images/{n}",
                 "/api/v1/jobs/{job_id}/archive", "/api/v1/anonymize", "/api/v1/render", "/api/v1/health",
                 "/api/v1/models"):
        assert path in spec["paths"], path
    assert "Problem" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200
    assert_problem(client.get("/api/v1/nothing-here"), 404)
    assert_problem(client.get("/api/v1/jobs/j_doesnotexist"), 404)


def test_formats_are_sniffed_not_taken_from_names(client):
    import pillow_heif

    pillow_heif.register_heif_opener()
    src = Image.open(io.BytesIO(astronaut_jpeg())).convert("RGB").resize((256, 256))
    encoded = []
    for fmt in ("PNG", "WEBP", "TIFF", "HEIF"):
        buf = io.BytesIO()
        src.save(buf, fmt)
        encoded.append(buf.getvalue())
    # every file claims to be a JPEG; the server goes by content
    r = client.post(
        "/api/v1/jobs",
        files=[("files", (f"lies{i}.jpg", data, "image/jpeg")) for i, data in enumerate(encoded)],
        data={"options": json.dumps(FAST)},
    )
    assert r.status_code == 202, r.text
    done = wait_job(client, r.json()["id"])
    assert [i["status"] for i in done["images"]] == ["done"] * 4, done
    types = [i["content_type"] for i in done["images"]]
    assert types[:3] == ["image/png", "image/webp", "image/tiff"] and types[3] in ("image/heif", "image/heic")
    names = zipfile.ZipFile(io.BytesIO(client.get(f"/api/v1/jobs/{done['id']}/archive").content)).namelist()
    assert names == ["0001.png", "0002.webp", "0003.tif", "0004.heic"]
