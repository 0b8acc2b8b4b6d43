"""``veil serve``: the API (and the web page) in one process."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from veil.cli.common import err_console, user_errors


@user_errors
def serve(
    host: str = typer.Option("127.0.0.1", "--host", envvar="VEIL_SERVER_HOST",
                             help="Address to bind. Loopback with no API keys = open local mode; any other "
                                  "address requires a key on every call."),
    port: int = typer.Option(8000, "--port", envvar="VEIL_SERVER_PORT"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="VEIL_SERVER_DATA_DIR",
                                            help="SQLite db and secrets (default $VEIL_HOME/server or "
                                                 "~/.local/share/veil/server)."),
    ttl: Optional[float] = typer.Option(None, "--ttl", min=1, help="Seconds results are kept after a job ends [3600]."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker threads running the pipeline."),
    queue_size: Optional[int] = typer.Option(None, "--queue-size", help="Waiting jobs before 503 [64]."),
    require_keys: Optional[bool] = typer.Option(None, "--require-keys/--no-require-keys",
                                                help="Force key checks on or off (default: from the bind address)."),
    allow_private_webhooks: bool = typer.Option(False, "--allow-private-webhooks",
                                                help="Let webhooks reach private, link-local and metadata addresses."),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Images per job [100]."),
    max_upload_mb: Optional[int] = typer.Option(None, "--max-upload-mb", help="Request body limit in MB [256]."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Pixels per image [150000000]."),
    max_request_pixels: Optional[int] = typer.Option(None, "--max-request-pixels", min=1,
                                                     help="Pixels of all the images of one request [1000000000]."),
    max_video_mb: Optional[int] = typer.Option(None, "--max-video-mb", min=1,
                                               help="Video upload limit in MB (spooled encrypted to disk) [2048]."),
    database: Optional[str] = typer.Option(None, "--database", envvar="VEIL_DATABASE_URL", show_envvar=True,
                                           help="postgresql://user:password@host:port/db for API keys, quotas and "
                                                "the audit log, shared by several API nodes (default: the SQLite "
                                                "file in the data dir). Never job records or images."),
    redis: Optional[str] = typer.Option(None, "--redis", envvar="VEIL_REDIS_URL", show_envvar=True,
                                        help="Distributed mode: job records, uploads and results in this Redis "
                                             "(redis://[:PASSWORD@]HOST:PORT/DB or rediss://), tasks run by "
                                             "'veil worker' processes (--workers is then unused)."),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Serve the API at http://HOST:PORT/api/v1 (OpenAPI docs at /docs)."""
    import uvicorn

    from veil.server.app import create_app
    from veil.server.config import ServerConfig
    from veil.server.redis_store import describe

    config = ServerConfig.from_env(
        host=host,
        port=port,
        data_dir=data_dir,
        ttl=ttl,
        workers=workers,
        queue_size=queue_size,
        require_keys=require_keys,
        allow_private_webhooks=allow_private_webhooks or None,
        max_images_per_job=max_images,
        max_request_bytes=max_upload_mb * 1024 * 1024 if max_upload_mb else None,
        max_pixels=max_pixels,
        max_request_pixels=max_request_pixels,
        max_video_bytes=max_video_mb * 1024 * 1024 if max_video_mb else None,
        database=database or None,
        redis_url=redis or None,
    )
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.redis_url:
        from veil.server.redis_store import check_reachable

        check_reachable(config.redis_url)
        from veil.server.redis_store import persistence_warning

        if warning := persistence_warning(config.redis_url):
            err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    app = create_app(config)
    state = app.state.veil
    mode = "API key required" if state.auth_required() else "open local mode (no key needed)"
    where = f"jobs in Redis {describe(config.redis_url)}" if config.redis_url else f"data in {config.data_dir}"
    err_console.print(f"veil serving on {config.base_url}  ·  {mode}  ·  {where}", highlight=False)
    if not config.loopback and not state.keys.has_active_keys():
        err_console.print("[yellow]no API key exists yet: create one with 'veil keys create'[/]")
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level.lower(), server_header=False)
