"""The shared database of API keys, usage counters and the audit log: PostgreSQL, so
several API nodes see the same keys and quotas, or the local SQLite file.

``open_database(url_or_path)``: a ``postgresql://`` (or ``postgres://``) URL gives a
:class:`PgStore`, anything else the SQLite :class:`~veil.server.store.Store` file.
Both have one interface (``execute``, ``query``, ``one``, ``transaction()``, ``close``)
and take ``?`` placeholders; :class:`PgStore` translates them to psycopg's ``%s``.
Job records and images never go to PostgreSQL (only ``api_keys``, ``usage``, ``audit``).

The URL's password is never shown: messages name ``host:port/db`` only.
"""

from __future__ import annotations

import functools
import importlib.util
import queue
import re
import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from veil.errors import VeilError
from veil.server.store import SHARED_SCHEMA, Database, Store

PG_SCHEMES = ("postgresql://", "postgres://")


def pg_schema(sqlite_schema: str) -> list[str]:
    """The statements of :data:`~veil.server.store.SHARED_SCHEMA` in PostgreSQL's
    dialect (one schema text, so the two backends cannot drift apart)."""
    sql = sqlite_schema.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
    sql = re.sub(r"\bREAL\b", "DOUBLE PRECISION", sql)
    return [st.strip() for st in sql.split(";") if st.strip()]


#: ``pg_advisory_xact_lock`` key: nodes starting at once create the schema one by one
#: (concurrent ``CREATE TABLE IF NOT EXISTS`` can fail on PostgreSQL's catalog).
_SCHEMA_LOCK = 0x7665696C  # "veil"


class DatabaseError(VeilError):
    """The shared database cannot be reached or used; the message names host:port/db,
    never the password."""


def is_pg_url(value: str | Path | None) -> bool:
    return isinstance(value, str) and value.strip().lower().startswith(PG_SCHEMES)


def open_database(url_or_path: str | Path, *, pool_size: int = 8) -> Database:
    """A :class:`PgStore` for a ``postgresql://`` URL, else the SQLite file at that path."""
    if is_pg_url(url_or_path):
        return PgStore(str(url_or_path).strip(), pool_size=pool_size)
    if isinstance(url_or_path, str) and "://" in url_or_path:
        scheme = url_or_path.split("://", 1)[0]
        raise DatabaseError(f"unsupported database URL scheme {scheme!r}: use postgresql://user:password@host:port/db")
    return Store(Path(url_or_path).expanduser())


def describe(url: str) -> str:
    """``host:port/dbname`` of a PostgreSQL URL (what messages show; no user or password)."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 - a malformed URL: show only its scheme
        return url.split("://", 1)[0] + "://…"
    return f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}/{info.get('dbname') or info.get('user') or ''}"


class Row(dict):
    """A result row: by column name like a ``dict`` and by position like ``sqlite3.Row``."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int):
            return list(self.values())[key]
        return super().__getitem__(key)


def _row_factory(cursor: Any) -> Any:
    names = [c.name for c in cursor.description or ()]
    return lambda values: Row(zip(names, values))


@functools.lru_cache(maxsize=512)
def to_pg(sql: str, named: bool = False) -> str:
    """SQLite-style SQL → psycopg's: ``?`` → ``%s`` (``:name`` → ``%(name)s`` when
    ``named``) outside string literals, quoted names and comments; every ``%`` doubled
    (psycopg reads ``%`` anywhere in the text). No ``$$`` or ``E''`` strings."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":  # a literal or quoted name, to its closing quote ('' and "" just re-open)
            j = sql.find(c, i + 1)
            j = n - 1 if j < 0 else j
            out.append(sql[i : j + 1].replace("%", "%%"))
            i = j + 1
        elif sql.startswith("--", i) or sql.startswith("/*", i):
            end = "\n" if c == "-" else "*/"
            j = sql.find(end, i + 2)
            j = n if j < 0 else j + len(end)
            out.append(sql[i:j].replace("%", "%%"))
            i = j
        elif c == "?":
            out.append("%s")
            i += 1
        elif c == "%":
            out.append("%%")
            i += 1
        elif named and c == ":" and not sql.startswith("::", i) and (i == 0 or sql[i - 1] != ":"):
            m = re.match(r":([A-Za-z_]\w*)", sql[i:])
            if m:
                out.append(f"%({m.group(1)})s")
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


class PgConnection:
    """What :meth:`PgStore.transaction` yields: ``execute``/``executemany`` with ``?``
    placeholders, returning a cursor (``fetchone``/``fetchall``, ``rowcount``)."""

    dialect = "postgresql"

    def __init__(self, conn: Any, where: str):
        self._conn = conn
        self._where = where

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
        with _errors(self._where):
            return self._conn.execute(to_pg(sql, isinstance(params, Mapping)), params)

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> Any:
        with _errors(self._where):
            cur = self._conn.cursor()
            cur.executemany(to_pg(sql), seq)
            return cur


@contextmanager
def _errors(where: str) -> Iterator[None]:
    """psycopg's connection errors → :class:`DatabaseError` naming ``where``; a
    constraint or SQL error (a bug or a race the caller handles) passes unchanged."""
    import psycopg

    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise DatabaseError(f"the database at {where} failed: {_first_line(exc)}") from None


def _begin(conn: Any, where: str) -> Any:
    with _errors(where):
        tx = conn.transaction()
        tx.__enter__()
    return tx


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class PgStore:
    """PostgreSQL with the interface of :class:`~veil.server.store.Store`.

    Connections come from a small pool of this class's own (``psycopg_pool`` is not a
    dependency): at most ``pool_size`` connections, reused LIFO, a broken one dropped
    and replaced. A pool, not one connection per thread, because the server's threads
    (request handlers, workers, webhook senders) come and go and outnumber what
    PostgreSQL's ``max_connections`` should give each of several nodes; a connection of
    a finished thread would stay open until it is collected. Plain calls run in
    autocommit; ``transaction()`` is one PostgreSQL transaction (READ COMMITTED: a
    read-check-write locks its rows, as ``quota_left`` does with ``FOR UPDATE``).
    """

    dialect = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 8, connect_timeout: int = 10, acquire_timeout: float = 30.0):
        if importlib.util.find_spec("psycopg") is None:  # the 'distributed' extra
            raise DatabaseError("a postgresql:// database needs psycopg: pip install 'veil[distributed]'")
        if pool_size < 1:
            raise ValueError("pool_size must be >= 1")
        self._url = url
        self._connect_timeout = connect_timeout
        self._acquire_timeout = acquire_timeout
        self.where = describe(url)
        self._idle: queue.LifoQueue = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._closed = False
        with self.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
            for statement in pg_schema(SHARED_SCHEMA):
                conn.execute(statement)

    def __repr__(self) -> str:
        return f"PgStore({self.where!r})"

    # -- the pool ----------------------------------------------------------------------
    def _connect(self) -> Any:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        try:
            extra = {} if "connect_timeout" in conninfo_to_dict(self._url) else {"connect_timeout": self._connect_timeout}
            return psycopg.connect(self._url, autocommit=True, row_factory=_row_factory, application_name="veil", **extra)
        except psycopg.Error as exc:
            reason = _first_line(exc)
            try:
                password = conninfo_to_dict(self._url).get("password")
            except Exception:  # noqa: BLE001
                password = None
            if password:
                reason = reason.replace(str(password), "***")
            raise DatabaseError(f"cannot connect to the database at {self.where}: {reason}") from None

    @contextmanager
    def _connection(self, *, fresh: bool = False) -> Iterator[tuple[Any, bool]]:
        """A connection and whether it was reused from the pool (not ``fresh``)."""
        if self._closed:
            raise DatabaseError(f"the database connection to {self.where} is closed")
        if not self._slots.acquire(timeout=self._acquire_timeout):
            raise DatabaseError(f"no free connection to {self.where} within {self._acquire_timeout:.0f} s")
        conn, reused = None, False
        try:
            while conn is None and not fresh:
                try:
                    conn = self._idle.get_nowait()
                except queue.Empty:
                    break
                if conn.closed or conn.broken:
                    conn.close()
                    conn = None
                reused = conn is not None
            if conn is None:
                conn = self._connect()
            yield conn, reused
        finally:
            if conn is not None:
                if conn.closed or conn.broken or self._closed:
                    conn.close()
                else:
                    self._idle.put(conn)
            self._slots.release()

    def _plain(self, fn: Callable[[PgConnection], Any]) -> Any:
        """``fn`` on a pooled connection in autocommit. One the server dropped while it
        sat idle (a restart, an idle timeout) fails at its first statement: then ``fn``
        runs once more on a new connection."""
        with self._connection() as (conn, reused):
            try:
                return fn(PgConnection(conn, self.where))
            except DatabaseError:
                if not (reused and conn.broken):
                    raise
        with self._connection(fresh=True) as (conn, _):
            return fn(PgConnection(conn, self.where))

    # -- the Store interface -----------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[PgConnection]:
        """``BEGIN`` … ``COMMIT`` (``ROLLBACK`` on an exception) on one pooled connection
        (a new one when ``BEGIN`` finds the pooled one dropped by the server)."""
        with ExitStack() as stack:
            conn, reused = stack.enter_context(self._connection())
            try:
                tx = _begin(conn, self.where)
            except DatabaseError:
                if not (reused and conn.broken):
                    raise
                stack.close()
                conn, _ = stack.enter_context(self._connection(fresh=True))
                tx = _begin(conn, self.where)
            try:
                yield PgConnection(conn, self.where)
            except BaseException as exc:
                try:
                    tx.__exit__(type(exc), exc, exc.__traceback__)  # ROLLBACK
                except Exception:  # noqa: BLE001 - the connection broke: ``exc`` says why
                    conn.close()
                raise
            else:
                with _errors(self.where):
                    tx.__exit__(None, None, None)

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> int:
        return self._plain(lambda c: c.execute(sql, params).rowcount)

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict[str, Any]]:
        return self._plain(lambda c: [dict(r) for r in c.execute(sql, params).fetchall()])

    def one(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> dict[str, Any] | None:
        def first(c: PgConnection) -> dict[str, Any] | None:
            row = c.execute(sql, params).fetchone()
            return dict(row) if row is not None else None

        return self._plain(first)

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


def open_server_database(config: Any) -> Database:
    """The database of a :class:`~veil.server.config.ServerConfig`: its ``database``
    URL, else the SQLite file in its data dir."""
    return open_database(config.database or config.db_path)
