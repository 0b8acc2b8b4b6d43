"""``veil anonymize --engine ray``: checks the options, then runs :mod:`veil.bulk.ray_engine`
with the same progress bar and items as the local run (the summary is the local run's)."""

from __future__ import annotations

import re
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from veil.cli.common import err_console
from veil.cli.paths import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from veil.cli.resume import remove_stale_temporaries
from veil.errors import OptionsError
from veil.pipeline.options import Options

ENGINES = ("local", "ray")


def check_engine(engine: str, ray_address: str | None) -> str:
    value = (engine or "local").strip().lower()
    if value not in ENGINES:
        raise OptionsError(f"--engine must be local or ray; got {engine!r}", field="engine")
    if ray_address and value != "ray":
        raise OptionsError("--ray-address goes with --engine ray", field="ray_address")
    return value


def ray_items(sources: list[str], output: str | None, options: Options, *, jobs: int, skip_existing: bool | None,
              in_place: bool, dry_run: bool, address: str | None) -> list[dict]:  # fmt: skip
    """Every item of the run: those settled up front (finished outputs, videos), then one per
    photo as Ray writes it; failures are printed as they come."""
    from veil.bulk import ray_engine

    if output is None or in_place:
        raise OptionsError("--engine ray writes to an output folder or bucket: give -o (not --in-place)")
    if dry_run:
        raise OptionsError("--dry-run runs on the local engine (drop --engine ray)")
    ray_engine.require_ray()
    job = ray_engine.BulkJob([_uri(s) for s in sources], _uri(output), options, IMAGE_SUFFIXES, VIDEO_SUFFIXES,
                             actors=jobs, skip_existing=skip_existing is not False, address=address)  # fmt: skip
    bulk = ray_engine.plan(job)
    if bulk.out.scheme == "file":  # what a killed run was writing
        remove_stale_temporaries(Path(r["dst"]) for r in bulk.todo)
    items = list(bulk.settled)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("anonymize (ray)", total=len(bulk.todo))
        for item in items:
            _show_failure(bar, item)
        for item in ray_engine.run(job, bulk):
            items.append(item)
            _show_failure(bar, item)
            bar.advance(task)
    return items


def _uri(value: Path | str) -> str:
    """Undo what typer's ``Path`` does to a URL (``s3://b/k`` arrives as ``s3:/b/k``)."""
    text = str(value)
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):/(?!/)", text)
    return f"{m.group(1)}://{text[m.end():]}" if m and len(m.group(1)) > 1 else text


def _show_failure(bar: Progress, item: dict) -> None:
    if not item["ok"]:
        bar.console.print(f"[red]failed[/] {item['path']}: {item['error']}", highlight=False, soft_wrap=True)
