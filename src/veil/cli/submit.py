"""``veil submit``: send photos and videos to a running ``veil serve`` and fetch the results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from veil.cli.common import console, err_console, user_errors
from veil.cli.paths import MEDIA_SUFFIXES
from veil.imageio.formats import IMAGE_FORMATS, VIDEO_FORMATS
from veil.errors import OptionsError, VeilError

#: Result suffix per served type, from the one format record of each image and video format.
_EXT = {t: f.extension.lstrip(".") for f in (*IMAGE_FORMATS, *VIDEO_FORMATS) for t in f.mime_types}


def _expand(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in MEDIA_SUFFIXES))
        elif p.is_file():
            out.append(p)
        else:
            raise VeilError(f"no such file or directory: {p}")
    if not out:
        raise VeilError("no images or videos to submit")
    return out


def _options(options: str | None, options_file: Path | None) -> dict | None:
    from veil.pipeline.options import Options

    data: dict = {}
    if options_file is not None:
        data.update(Options.from_toml(options_file).to_json())
    if options:
        try:
            extra = json.loads(options)
        except json.JSONDecodeError as exc:
            raise OptionsError(f"--options is not valid JSON: {exc.msg}", field="options") from None
        if not isinstance(extra, dict):
            raise OptionsError("--options must be a JSON object", field="options")
        data.update(extra)
    if data:
        Options.from_mapping(data)  # fail here, before uploading anything
    return data or None


@user_errors
def submit(
    paths: list[Path] = typer.Argument(..., help="Images, videos, or folders of them."),
    server: str = typer.Option("http://127.0.0.1:8000", "--server", envvar="VEIL_SERVER_URL", help="Base URL."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="VEIL_API_KEY", help="API key, if needed."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the anonymized images and videos."),
    options: Optional[str] = typer.Option(None, "--options", help='JSON options, e.g. \'{"style": "pixelate"}\'.'),
    options_file: Optional[Path] = typer.Option(None, "--options-file", help="TOML preset file."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait for each job."),
    keep: bool = typer.Option(False, "--keep", help="Leave the job on the server (default: delete after download)."),
) -> None:
    """Upload images and videos as jobs (split by the server's per-job limit), wait, download into OUTPUT."""
    import httpx

    from veil.client import ApiError, Client

    files = _expand(paths)
    opts = _options(options, options_file)
    output.mkdir(parents=True, exist_ok=True)
    failed = 0
    used: set[str] = set()
    try:
        with Client(server, api_key=api_key) as client:
            per_job = int(client.health().get("limits", {}).get("max_images_per_job") or 100)
            for start in range(0, len(files), per_job):
                batch = files[start : start + per_job]
                job = client.submit(batch, opts)
                err_console.print(f"job {job.id}: {len(batch)} file(s) submitted", highlight=False)
                job = client.wait(job, timeout=timeout)
                for img in job.images:
                    src = batch[img["index"]]
                    if img["status"] != "done":
                        failed += 1
                        err_console.print(f"[red]failed[/] {src}: {img.get('error') or img['status']}", highlight=False)
                        continue
                    ext = _EXT.get((img.get("content_type") or "").split(";")[0], src.suffix.lstrip(".") or "bin")
                    name = f"{src.stem}.{ext}"
                    i = 1
                    while name in used or (output / name).exists():
                        name = f"{src.stem}-{i}.{ext}"
                        i += 1
                    used.add(name)
                    client.download_to(job, img["index"], output / name)  # streamed: videos can be large
                    dets = ", ".join(f"{k}={v}" for k, v in sorted((img.get("detections") or {}).items()))
                    console.print(f"{src} → {output / name}  ({dets})", highlight=False)
                if not keep:
                    client.delete(job)
    except ApiError as exc:
        raise VeilError(f"server refused: {exc}") from None
    except TimeoutError as exc:
        raise VeilError(str(exc)) from None
    except (OSError, httpx.HTTPError) as exc:
        raise VeilError(f"cannot reach {server}: {exc}") from None
    if failed:
        raise typer.Exit(1)
