"""API keys, quotas and the audit log on a real PostgreSQL (started by the tests, see
``pg_server``), so several API nodes share them; the same SQL also runs on SQLite."""

from __future__ import annotations

import itertools
import json
import secrets
import tempfile
import threading
import time
from pathlib import Path

import pytest
from pg_server import PgCluster, PgServer, pg_bin_dir
from test_server_support import FAST, assert_problem, small_photo, start_server
from typer.testing import CliRunner

from veil.cli.main import app as cli
from veil.server.audit import AuditLog
from veil.server.config import ServerConfig
from veil.server.database import DatabaseError, PgStore, describe, open_database, to_pg
from veil.server.keys import KeyManager, add_usage, hash_key, quota_left
from veil.server.store import Store


@pytest.fixture(scope="session")
def pg_server():
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin: apt-get install postgresql")
    cluster = PgCluster(bin_dir)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database of the session's cluster for each test."""
    import psycopg

    name = "t_" + secrets.token_hex(6)
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_server.url(name)


@pytest.fixture
def pg(pg_url: str):
    db = open_database(pg_url)
    assert isinstance(db, PgStore)
    yield db
    db.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request, tmp_path):
    """Both backends: keys and audit SQL must run on each."""
    db = open_database(tmp_path / "db.sqlite3") if request.param == "sqlite" else open_database(request.getfixturevalue("pg_url"))
    assert db.dialect == request.param
    yield db
    db.close()


def _cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


# -- the backend ---------------------------------------------------------------------
def test_placeholders_are_translated_outside_literals_only(pg):
    assert to_pg("SELECT '?', \"a?\", x FROM t WHERE a = ? AND b LIKE 'x%' -- why?\n AND c = ?") == (
        "SELECT '?', \"a?\", x FROM t WHERE a = %s AND b LIKE 'x%%' -- why?\n AND c = %s"
    )
    assert to_pg("SELECT 'it''s ?', ?") == "SELECT 'it''s ?', %s"
    assert to_pg("SELECT :a, x::text", named=True) == "SELECT %(a)s, x::text"
    assert pg.one("SELECT '?%' AS lit, ? AS p, 'it''s' AS q", ("v",)) == {"lit": "?%", "p": "v", "q": "it's"}
    assert pg.one("SELECT :name AS n", {"name": "named"}) == {"n": "named"}
    with pg.transaction() as conn:  # rows by name and by position, as sqlite3.Row
        row = conn.execute("SELECT 7 AS seven, 'x' AS ex").fetchone()
        assert (row[0], row["ex"]) == (7, "x")


def test_transaction_rolls_back_on_error(pg):
    key = KeyManager(pg).create("t").key
    with pytest.raises(RuntimeError), pg.transaction() as conn:
        conn.execute("UPDATE api_keys SET name = ? WHERE id = ?", ("changed", key.id))
        raise RuntimeError("abort")
    assert KeyManager(pg).get(key.id).name == "t"


def _drop_connections(pg_server: PgServer, db: PgStore) -> int:
    """What a database restart does to a node's pooled connections."""
    import psycopg

    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as admin:
        return admin.execute(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
            (db.where.rsplit("/", 1)[1],),
        ).fetchone()[0]


def test_connections_dropped_by_the_server_are_replaced(pg, pg_server):
    mgr = KeyManager(pg)
    key = mgr.create("k", quota_per_day=3).key
    assert _drop_connections(pg_server, pg) >= 1
    assert [k.id for k in mgr.list()] == [key.id]  # a plain call on a new connection
    assert _drop_connections(pg_server, pg) >= 1
    assert mgr.reserve(key, 1) == 3  # a transaction on a new connection
    assert mgr.used_today(key.id) == 1


def test_open_database_picks_the_backend(tmp_path, pg_url):
    assert isinstance(open_database(tmp_path / "x.sqlite3"), Store)
    assert isinstance(open_database(str(tmp_path / "y.sqlite3")), Store)
    with pytest.raises(DatabaseError, match="unsupported database URL scheme 'mysql'") as info:
        open_database("mysql://root:s3cret@db/veil")
    assert "s3cret" not in str(info.value)
    for url in (pg_url, pg_url.replace("postgresql://", "postgres://", 1)):
        db = open_database(url)
        assert isinstance(db, PgStore) and db.dialect == "postgresql"
        assert "password" not in repr(db) and pg_url.split(":")[2].split("@")[0] not in repr(db)
        db.close()


# -- keys, quotas and the audit log --------------------------------------------------
def test_keys_created_authenticated_and_revoked(any_db):
    mgr = KeyManager(any_db)
    assert not mgr.has_active_keys()
    created = mgr.create("alice", quota_per_day=10, max_concurrent=2)
    row = any_db.one("SELECT * FROM api_keys WHERE id = ?", (created.key.id,))
    assert row["hash"] == hash_key(created.token) and created.token not in json.dumps(row)
    assert mgr.authenticate(created.token) == created.key
    assert mgr.authenticate(" " + created.token + "\n") == created.key
    assert mgr.authenticate("veil_nope") is None and mgr.authenticate("") is None
    assert [k.id for k in mgr.list()] == [created.key.id] and mgr.has_active_keys()
    assert mgr.get(created.key.id).max_concurrent == 2
    assert mgr.revoke(created.key.id) and not mgr.revoke(created.key.id)
    assert mgr.authenticate(created.token) is None and not mgr.has_active_keys()
    assert mgr.list(include_revoked=False) == [] and mgr.get(created.key.id).revoked is not None


def test_quota_reserved_and_refunded(any_db):
    mgr = KeyManager(any_db)
    key = mgr.create("q", quota_per_day=5).key
    assert mgr.reserve(key, 3) == 5 and mgr.used_today(key.id) == 3
    assert mgr.reserve(key, 3) == 2 and mgr.used_today(key.id) == 3  # refused: nothing taken
    mgr.refund(key.id, 3)
    assert mgr.reserve(key, 5) == 5 and mgr.used_today(key.id) == 5
    unlimited = mgr.create("u").key
    assert mgr.reserve(unlimited, 1000) is None and mgr.used_today(unlimited.id) == 1000


def test_audit_entries_written_listed_and_filtered(any_db):
    log = AuditLog(any_db)
    log.record("job", key_id="k_a", job_id="j_1", status="done", image_count=2,
               options={"preset": "fast"}, detections={"face": 3}, outputs=["ab" * 32, "cd" * 32])
    t_mid = time.time()
    log.record("anonymize", key_id="k_b", status="done", image_count=1, detections={"plate": 1}, outputs=["ef" * 32])
    log.record("render", key_id="k_a", status="failed", image_count=1)
    entries = log.entries()
    assert [e.event for e in entries] == ["job", "anonymize", "render"]  # oldest first
    first = entries[0]
    assert (first.options, first.detections, first.outputs, first.image_count) == (
        {"preset": "fast"}, {"face": 3}, ["ab" * 32, "cd" * 32], 2)
    assert [e.event for e in log.entries(key_id="k_a")] == ["job", "render"]
    assert [e.event for e in log.entries(job_id="j_1")] == ["job"]
    assert [e.event for e in log.entries(since=t_mid)] == ["anonymize", "render"]
    assert [e.event for e in log.entries(limit=1)] == ["render"]  # the newest
    assert entries[1].to_json()["outputs_sha256"] == ["ef" * 32]


def _waiting_on_a_lock(db: PgStore) -> bool:
    row = db.one("SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
                 "AND wait_event_type = 'Lock'")
    return row["n"] > 0


def test_two_threads_racing_for_the_last_quota_unit_only_one_wins(pg):
    """A reads the count (1 left) and holds its transaction open until B has either
    read too (no lock: both would win) or is blocked on A's lock; then A takes the unit.
    Exactly one of them may get it, whatever the scheduling."""
    mgr = KeyManager(pg)
    key = mgr.create("race", quota_per_day=5).key
    assert mgr.reserve(key, 4) == 5
    a_read, b_read = threading.Event(), threading.Event()
    granted: list[str] = []
    errors: list[BaseException] = []

    def take(name: str, conn) -> None:  # noqa: ANN001 - the jobs.py way: read, check, write
        left = quota_left(conn, key)
        if name == "b":
            b_read.set()
        else:
            a_read.set()
            deadline = time.monotonic() + 30
            while not b_read.is_set() and not _waiting_on_a_lock(pg):
                assert time.monotonic() < deadline, "B neither read nor waited on A's lock"
                time.sleep(0.01)
        if left is not None and left >= 1:
            add_usage(conn, key.id, 1)
            granted.append(name)

    def run(name: str) -> None:
        try:
            if name == "b":
                assert a_read.wait(30)
            with pg.transaction() as conn:
                take(name, conn)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert granted == ["a"] and mgr.used_today(key.id) == 5


def _at_once(fn, n: int) -> list:  # noqa: ANN001
    """``fn()`` in ``n`` threads released together; their results (an error is raised)."""
    start = threading.Barrier(n)
    results: list = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            start.wait(30)
            value = fn()
            with lock:
                results.append(value)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


def test_many_threads_on_two_nodes_get_exactly_the_quota(pg, pg_url):
    other_node = open_database(pg_url)
    nodes = itertools.cycle([KeyManager(pg), KeyManager(other_node)])
    key = next(nodes).create("crowd", quota_per_day=5).key  # no usage row yet: the first ones race to create it
    results = _at_once(lambda: next(nodes).reserve(key, 1), 8)
    assert sorted(results, reverse=True) == [5, 4, 3, 2, 1, 0, 0, 0]
    assert next(nodes).used_today(key.id) == 5
    other_node.close()


def test_nodes_starting_at_once_create_the_schema_once(pg_url):
    stores = _at_once(lambda: PgStore(pg_url, pool_size=1), 4)
    KeyManager(stores[0]).create("x")
    assert len(KeyManager(stores[-1]).list()) == 1  # one database seen by every node
    for s in stores:
        s.close()


# -- config and CLI ------------------------------------------------------------------
def test_config_reads_the_database_url_and_hides_it(pg_url):
    assert ServerConfig.from_env({}).database is None
    assert ServerConfig.from_env({"VEIL_DATABASE_URL": pg_url}).database == pg_url
    assert ServerConfig.from_env({"VEIL_DATABASE_URL": "postgresql://other"}, database=pg_url).database == pg_url
    password = pg_url.split(":")[2].split("@")[0]
    assert password not in repr(ServerConfig(database=pg_url))


def test_cli_keys_on_the_shared_database_and_a_server_accepts_them(pg_url, tmp_path):
    """``veil keys create --database URL`` on one machine; a server started with that
    ``--database`` (its own, empty data dir: another node) accepts the key, audits on
    the shared database, and ``veil keys revoke`` there shuts it out at once."""
    r = _cli("keys", "create", "--name", "node-test", "--quota-per-day", "1", "--json", "--database", pg_url,
             "--data-dir", str(tmp_path / "a"))
    assert r.exit_code == 0, r.output
    created = json.loads(r.stdout)

    def listed() -> list[dict]:
        r = _cli("keys", "list", "--json", "--data-dir", str(tmp_path / "b"), env={"VEIL_DATABASE_URL": pg_url})
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    assert [(k["id"], k["used_today"]) for k in listed()] == [(created["id"], 0)]

    srv = start_server(ServerConfig(data_dir=Path(tempfile.mkdtemp()), require_keys=True, workers=1, database=pg_url))
    try:
        with srv.client() as c:
            assert_problem(c.get("/api/v1/models"), 401)
        with srv.client(Authorization=f"Bearer {created['key']}") as c:
            assert c.get("/api/v1/models").status_code == 200
            r = c.post("/api/v1/anonymize", files={"file": ("p.jpg", small_photo())}, data={"options": json.dumps(FAST)})
            assert r.status_code == 200, r.text
            # the quota (1 image a day) is counted on the shared database: spent for every node
            assert [k["used_today"] for k in listed()] == [1]
            r = c.post("/api/v1/anonymize", files={"file": ("p.jpg", small_photo())}, data={"options": json.dumps(FAST)})
            assert_problem(r, 429)
        r = _cli("audit", "--json", "--key", created["id"], "--database", pg_url, "--data-dir", str(tmp_path / "c"))
        assert r.exit_code == 0, r.output
        entries = [json.loads(line) for line in r.stdout.splitlines()]
        assert [(e["event"], e["key_id"], e["image_count"]) for e in entries] == [("anonymize", created["id"], 1)]
        r = _cli("keys", "revoke", created["id"], "--database", pg_url, "--data-dir", str(tmp_path / "a"))
        assert r.exit_code == 0, r.output
        with srv.client(Authorization=f"Bearer {created['key']}") as c:
            assert_problem(c.get("/api/v1/models"), 401)
    finally:
        srv.stop()


def test_wrong_password_is_a_clean_error_without_the_password(pg_server: PgServer, tmp_path):
    wrong = "Wr0ng-" + secrets.token_hex(8)
    url = pg_server.url(password=wrong)
    where = f"{pg_server.host}:{pg_server.port}/{pg_server.database}"
    with pytest.raises(DatabaseError) as info:
        open_database(url)
    assert where in str(info.value) and wrong not in str(info.value)
    assert describe(url) == where
    for args in (["keys", "list"], ["keys", "create"], ["audit"],
                 ["serve", "--port", "0", "--data-dir", str(tmp_path / "srv")]):
        r = _cli(*args, "--database", url, *([] if args[0] == "serve" else ["--data-dir", str(tmp_path)]))
        assert r.exit_code == 1, (args, r.output)
        assert where in r.output and "password authentication failed" in r.output, r.output
        assert wrong not in r.output and "Traceback" not in r.output
    r = _cli("keys", "list", "--database", f"postgresql://veil:{wrong}@127.0.0.1:1/nowhere", "--data-dir", str(tmp_path))
    assert r.exit_code == 1 and "127.0.0.1:1/nowhere" in r.output and wrong not in r.output, r.output
