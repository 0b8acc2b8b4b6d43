"""``veil worker``: run veil's tasks from the Redis of ``veil serve --redis``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from veil.cli.common import err_console, user_errors


@user_errors
def worker(
    redis: str = typer.Option(..., "--redis", envvar="VEIL_REDIS_URL", show_envvar=True,
                              help="The Redis of the API nodes: redis://[:PASSWORD@]HOST:PORT/DB or rediss://."),
    database: Optional[str] = typer.Option(None, "--database", envvar="VEIL_DATABASE_URL", show_envvar=True,
                                           help="Keys and audit log shared with the API nodes (postgresql://...); "
                                                "default: the SQLite file in --data-dir (one machine only)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="VEIL_SERVER_DATA_DIR",
                                            help="Where the SQLite database lives when --database is not given."),
    preset: str = typer.Option("balanced", "--preset",
                               help="Load this preset's models at start (fast, balanced, thorough; 'none' to skip)."),
    ttl: Optional[float] = typer.Option(None, "--ttl", min=1, help="Seconds results are kept after a job ends [3600]; "
                                                             "the same as the API nodes'."),
    heartbeat: float = typer.Option(10.0, "--heartbeat", min=2,
                                    help="Seconds after which a silent (killed) worker's task is run again."),
    maintenance: float = typer.Option(10.0, "--maintenance", min=1,
                                      help="Seconds between this worker's checks for abandoned tasks."),
    name: Optional[str] = typer.Option(None, "--name", help="Worker name (default: host and pid)."),
    burst: bool = typer.Option(False, "--burst", help="Stop once the queues are empty."),
    allow_private_webhooks: bool = typer.Option(False, "--allow-private-webhooks",
                                                help="Let webhooks reach private, link-local and metadata addresses."),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Serve tasks of 'veil serve --redis' (models loaded once; one task at a time; start several)."""
    from veil.errors import OptionsError
    from veil.server.config import ServerConfig
    from veil.server.redis_store import check_reachable, describe
    from veil.server.worker import run_worker

    if preset not in ("fast", "balanced", "thorough", "none"):
        raise OptionsError(f"unknown preset {preset!r}; choose fast, balanced, thorough or none", field="preset")
    config = ServerConfig.from_env(data_dir=data_dir, ttl=ttl, database=database or None, redis_url=redis,
                                   allow_private_webhooks=allow_private_webhooks or None)  # fmt: skip
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_reachable(redis)
    from veil.server.redis_store import persistence_warning

    if warning := persistence_warning(redis):
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    err_console.print(f"veil worker on Redis {describe(redis)}  ·  warming up preset {preset}", highlight=False)
    run_worker(config, name=name, heartbeat=heartbeat, maintenance=maintenance, burst=burst,
               preset=None if preset == "none" else preset)  # fmt: skip
