"""API keys, quotas, concurrency limits and open-local vs key-required mode."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from test_server_support import (
    FAST,
    assert_problem,
    occupy_worker,
    small_photo,
    start_server,
    submit,
    wait_job,
)
from typer.testing import CliRunner

from veil.server.config import ServerConfig, ServerLimits
from veil.server.keys import hash_key


@pytest.fixture(scope="module")
def keyed():
    """A loopback server that requires keys (forced by config), one worker, real pipeline."""
    srv = start_server(
        ServerConfig(data_dir=Path(tempfile.mkdtemp()), require_keys=True, workers=1, queue_size=8,
                     limits=ServerLimits(max_concurrent_jobs_per_key=2)),
    )
    yield srv
    srv.stop()


_submit = submit  # small real photos, fast preset


def test_key_required_mode_refuses_missing_and_bad_keys(keyed):
    with keyed.client() as c:
        assert_problem(_submit(c), 401)
        r = c.get("/api/v1/jobs/j_x")
        assert_problem(r, 401)
        assert "bearer" in r.headers["www-authenticate"].lower()
    with keyed.client(Authorization="Bearer veil_nope") as c:
        assert_problem(_submit(c), 401)
    with keyed.client() as c:  # health stays public; it says keys are needed
        assert c.get("/api/v1/health").json()["auth"] == "keys"


def test_keys_are_stored_hashed_and_work_in_both_headers(keyed):
    created = keyed.state.keys.create("alice")
    row = keyed.state.store.one("SELECT * FROM api_keys WHERE id = ?", (created.key.id,))
    assert row["hash"] == hash_key(created.token) and created.token not in json.dumps(row)
    for headers in ({"Authorization": f"Bearer {created.token}"}, {"X-API-Key": created.token}):
        with keyed.client(**headers) as c:
            r = _submit(c)
            assert r.status_code == 202, r.text
            assert wait_job(c, r.json()["id"])["status"] == "done"


def test_jobs_are_private_to_their_key(keyed):
    a = keyed.state.keys.create("a").token
    b = keyed.state.keys.create("b").token
    with keyed.client(Authorization=f"Bearer {a}") as ca, keyed.client(Authorization=f"Bearer {b}") as cb:
        job = _submit(ca).json()["id"]
        wait_job(ca, job)
        assert_problem(cb.get(f"/api/v1/jobs/{job}"), 404)
        assert_problem(cb.get(f"/api/v1/jobs/{job}/images/0"), 404)
        assert_problem(cb.delete(f"/api/v1/jobs/{job}"), 404)
        assert ca.get(f"/api/v1/jobs/{job}/images/0").status_code == 200


def test_revoked_key_is_refused(keyed):
    created = keyed.state.keys.create("temp")
    with keyed.client(**{"X-API-Key": created.token}) as c:
        assert c.get("/api/v1/models").status_code == 200
        assert keyed.state.keys.revoke(created.key.id)
        assert_problem(c.get("/api/v1/models"), 401)


def test_daily_quota_gives_429_with_retry_after(keyed):
    token = keyed.state.keys.create("quota", quota_per_day=3).token
    with keyed.client(Authorization=f"Bearer {token}") as c:
        r = _submit(c, n=2)
        assert r.status_code == 202
        wait_job(c, r.json()["id"])
        r = _submit(c, n=2)  # 2 > 1 left
        body = assert_problem(r, 429)
        assert "quota" in body["detail"]
        assert int(r.headers["retry-after"]) > 0
        r = _submit(c, n=1)  # the last one still fits
        assert r.status_code == 202
        wait_job(c, r.json()["id"])
        r = c.post("/api/v1/anonymize", files={"file": ("x.jpg", small_photo())}, data={"options": json.dumps(FAST)})
        assert_problem(r, 429)


def test_concurrent_jobs_per_key_limit(keyed, photos):
    token = keyed.state.keys.create("busy", max_concurrent=1).token
    other = keyed.state.keys.create("other").token
    with keyed.client(Authorization=f"Bearer {other}") as oc, keyed.client(Authorization=f"Bearer {token}") as c:
        blocker = occupy_worker(oc, photos)  # the one worker is busy with another key's job
        try:
            first = _submit(c)
            assert first.status_code == 202
            assert c.get(f"/api/v1/jobs/{first.json()['id']}").json()["status"] == "queued"
            r = _submit(c)
            body = assert_problem(r, 429)
            assert "unfinished" in body["detail"] and int(r.headers["retry-after"]) > 0
            # the limit is per key: the other key still has room
            assert _submit(oc).status_code == 202
        finally:
            assert oc.delete(f"/api/v1/jobs/{blocker}").status_code == 204
        assert wait_job(c, first.json()["id"])["status"] == "done"
        r = _submit(c)  # finished: room again
        assert r.status_code == 202
        wait_job(c, r.json()["id"])


def test_open_local_mode_and_non_loopback_binding():
    data_dir = Path(tempfile.mkdtemp())
    srv = start_server(ServerConfig(data_dir=data_dir))
    try:
        with srv.client() as c:
            assert c.get("/api/v1/health").json()["auth"] == "open"
            r = _submit(c)
            assert r.status_code == 202
            wait_job(c, r.json()["id"])
            # once a key exists, loopback needs keys too
            token = srv.state.keys.create("now-keyed").token
            assert_problem(_submit(c), 401)
        with srv.client(Authorization=f"Bearer {token}") as c:
            r = _submit(c)
            assert r.status_code == 202
            assert wait_job(c, r.json()["id"])["status"] == "done"
    finally:
        srv.stop()
    # configured for a public address: keys required even with none created
    public = start_server(ServerConfig(host="0.0.0.0", data_dir=Path(tempfile.mkdtemp())))
    try:
        assert public.state.auth_required()
        with public.client() as c:
            assert_problem(_submit(c), 401)
            assert c.get("/api/v1/health").json()["auth"] == "keys"
    finally:
        public.stop()


def test_keys_cli_round_trip(tmp_path):
    from veil.cli.main import app

    runner = CliRunner()
    r = runner.invoke(app, ["keys", "create", "--name", "ci", "--quota-per-day", "5", "--json", "--data-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    created = json.loads(r.stdout)
    assert created["key"].startswith("veil_") and created["quota_per_day"] == 5
    r = runner.invoke(app, ["keys", "list", "--json", "--data-dir", str(tmp_path)])
    listed = json.loads(r.stdout)
    assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0]
    assert created["key"] not in r.stdout
    r = runner.invoke(app, ["keys", "revoke", created["id"], "--data-dir", str(tmp_path)])
    assert r.exit_code == 0
    assert json.loads(runner.invoke(app, ["keys", "list", "--json", "--data-dir", str(tmp_path)]).stdout)[0]["revoked"]
    assert runner.invoke(app, ["keys", "revoke", created["id"], "--data-dir", str(tmp_path)]).exit_code == 1
    db = tmp_path / "veil-server.sqlite3"
    assert (db.stat().st_mode & 0o777) == 0o600 and (tmp_path.stat().st_mode & 0o777) == 0o700


def test_keys_cli_takes_the_server_default_quota(tmp_path, monkeypatch):
    from veil.cli.main import app

    monkeypatch.setenv("VEIL_SERVER_DEFAULT_QUOTA_PER_DAY", "250")
    runner = CliRunner()
    args = ["keys", "create", "--json", "--data-dir", str(tmp_path)]
    assert json.loads(runner.invoke(app, args).stdout)["quota_per_day"] == 250
    assert json.loads(runner.invoke(app, [*args, "--quota-per-day", "0"]).stdout)["quota_per_day"] == 0
