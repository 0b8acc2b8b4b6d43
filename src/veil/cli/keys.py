"""``veil keys create|list|revoke``: API keys of the local server (stored hashed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from veil.cli.common import console, err_console, user_errors

app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys of 'veil serve'.")

DataDir = typer.Option(None, "--data-dir", envvar="VEIL_SERVER_DATA_DIR", help="The server's data dir.")
DatabaseUrl = typer.Option(None, "--database", envvar="VEIL_DATABASE_URL", show_envvar=True,
                           help="postgresql://user:password@host:port/db shared by several API nodes "
                                "(default: the SQLite file in the data dir).")


def _config(data_dir: Optional[Path], database: Optional[str] = None):  # noqa: ANN202
    from veil.server.config import ServerConfig

    return ServerConfig.from_env(data_dir=data_dir, database=database or None)


def _manager(config):  # noqa: ANN001, ANN202
    from veil.server.database import open_server_database
    from veil.server.keys import KeyManager

    return KeyManager(open_server_database(config))


@app.command("create")
@user_errors
def create(
    name: str = typer.Option("", "--name", help="A label for the key (who or what uses it)."),
    quota_per_day: Optional[int] = typer.Option(None, "--quota-per-day", min=0,
                                                help="Images per UTC day; 0 = unlimited (default: the server's default_quota_per_day, 0)."),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", min=1,
                                                 help="Unfinished jobs at once (default: server limit)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    data_dir: Optional[Path] = DataDir,
    database: Optional[str] = DatabaseUrl,
) -> None:
    """Create a key. The key and its webhook secret are shown once: store them now."""
    config = _config(data_dir, database)
    quota = config.default_quota_per_day if quota_per_day is None else quota_per_day
    created = _manager(config).create(name, quota_per_day=quota, max_concurrent=max_concurrent)
    if as_json:
        print(json.dumps({**created.key.public(), "key": created.token, "webhook_secret": created.key.secret}))
        return
    console.print(f"id:             {created.key.id}", highlight=False)
    console.print(f"key:            {created.token}", highlight=False)
    console.print(f"webhook secret: {created.key.secret}", highlight=False)
    err_console.print("The key is stored only as a hash: it cannot be shown again.")


@app.command("list")
@user_errors
def list_keys(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    data_dir: Optional[Path] = DataDir,
    database: Optional[str] = DatabaseUrl,
) -> None:
    """List keys (ids, quotas, today's use); never the keys themselves."""
    mgr = _manager(_config(data_dir, database))
    keys = mgr.list()
    rows = [{**k.public(), "used_today": mgr.used_today(k.id)} for k in keys]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title="veil API keys")
    for col in ("id", "name", "quota/day", "used today", "max concurrent", "created", "revoked"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["id"], r["name"], str(r["quota_per_day"] or "∞"), str(r["used_today"]),
            str(r["max_concurrent"] or "default"), r["created"] or "", r["revoked"] or "",
        )
    console.print(table)


@app.command("revoke")
@user_errors
def revoke(
    key_id: str = typer.Argument(..., help="The key's id (k_…), as shown by 'veil keys list'."),
    data_dir: Optional[Path] = DataDir,
    database: Optional[str] = DatabaseUrl,
) -> None:
    """Revoke a key at once; requests with it get 401."""
    if not _manager(_config(data_dir, database)).revoke(key_id):
        err_console.print(f"[red]no active key {key_id!r}[/]")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}", highlight=False)
