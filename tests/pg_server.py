"""A real, throw-away PostgreSQL server for the tests (no Docker).

``initdb`` makes a cluster in a temp dir, ``pg_ctl`` starts it on a free port of
127.0.0.1 (its unix socket in the same temp dir, so it never touches the system's),
a database is created, and everything is stopped and removed at the end. PostgreSQL
refuses to run as root: as root (CI) the cluster belongs to Debian's ``postgres``
user and the server runs under ``runuser -u postgres --``. TCP logins need a
password (scram-sha-256), so a wrong password really is refused.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "veil"
DATABASE = "veil_test"


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str
    password: str
    database: str

    def url(self, database: str | None = None, password: str | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql://{self.user}:{pw}@{self.host}:{self.port}/{database or self.database}"


def pg_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` and ``pg_ctl``."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [d for d in found if (d / "pg_ctl").exists()]
    if not found:
        on_path = shutil.which("initdb")
        return Path(on_path).parent if on_path and shutil.which("pg_ctl") else None
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)


def _others_can_enter(path: str) -> bool:
    """Whether every folder down to ``path`` lets other users (``postgres``) through."""
    p = Path(path).resolve()
    return all(d.stat().st_mode & 0o001 for d in (p, *p.parents))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """``start()`` → a :class:`PgServer`; ``stop()`` stops it and removes its files."""

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="veil-pg-", dir=None if _others_can_enter(tempfile.gettempdir()) else "/tmp"))
        self.data = self.root / "data"
        self.started = False

    def _run(self, *args: str, timeout: float = 120) -> None:
        cmd = list(args)
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")

    def start(self) -> PgServer:
        password = secrets.token_urlsafe(16)
        pwfile = self.root / "pw"
        pwfile.write_text(password + "\n")
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync", "--locale=C",
        )
        pwfile.unlink()
        port = _free_port()
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {self.root} -c fsync=off -c max_connections=50"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")
        self.started = True
        server = PgServer("127.0.0.1", port, SUPERUSER, password, DATABASE)
        import psycopg

        with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        return server

    def stop(self) -> None:
        try:
            if self.started:
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
