"""``veil audit``: what the server anonymized (never image bytes, names or GPS)."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from veil.cli.common import console, user_errors
from veil.errors import OptionsError


def parse_since(value: str | None) -> float | None:
    """``24h``, ``7d``, ``30m`` ago, or an ISO date/time (UTC when no zone)."""
    if not value:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", value)
    if m:
        return time.time() - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise OptionsError(f"--since must look like 24h, 7d or 2024-05-01T12:00; got {value!r}", field="since") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


@user_errors
def audit(
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="Newest entries to show."),
    since: Optional[str] = typer.Option(None, "--since", help="Only entries after: 24h, 7d or an ISO time."),
    key_id: Optional[str] = typer.Option(None, "--key", help="Only this key id."),
    job_id: Optional[str] = typer.Option(None, "--job", help="Only this job."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="VEIL_SERVER_DATA_DIR"),
    database: Optional[str] = typer.Option(None, "--database", envvar="VEIL_DATABASE_URL", show_envvar=True,
                                           help="postgresql://user:password@host:port/db shared by several "
                                                "API nodes (default: the SQLite file in the data dir)."),
) -> None:
    """Show the server's audit log: time, key id, job, images, options, detections, output hashes."""
    from veil.server.audit import AuditLog
    from veil.server.config import ServerConfig
    from veil.server.database import open_server_database

    config = ServerConfig.from_env(data_dir=data_dir, database=database or None)
    if not config.database and not config.db_path.exists():
        console.print(f"no server database in {config.data_dir}", highlight=False)
        return
    entries = AuditLog(open_server_database(config)).entries(limit=limit, since=parse_since(since), key_id=key_id, job_id=job_id)
    if as_json:
        for e in entries:
            print(json.dumps(e.to_json(), separators=(",", ":")))
        return
    table = Table(title="veil audit log")
    for col in ("time", "event", "key", "job", "status", "images", "detections", "outputs (sha256)"):
        table.add_column(col)
    for e in entries:
        d = e.to_json()
        dets = ", ".join(f"{k}={v}" for k, v in sorted(e.detections.items())) or "-"
        outs = "\n".join(h[:16] + "…" for h in e.outputs) or "-"
        table.add_row(d["time"], e.event, e.key_id or "(open)", e.job_id or "-", e.status or "-",
                      str(e.image_count), dets, outs)
    console.print(table)
