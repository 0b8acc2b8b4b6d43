"""``veil detect``: find faces, people and plates and write their boxes as JSON."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from veil.cli.common import err_console, parse_targets, user_errors
from veil.cli.paths import collect_images
from veil.cli.video import detect_video_lines, video_extension
from veil.detection.types import TARGETS
from veil.errors import VeilError
from veil.imageio import atomic_file, atomic_write
from veil.pipeline.options import Options, option_help


@user_errors
def detect(
    paths: list[Path] = typer.Argument(..., help="Image or video files, or folders (searched recursively)."),
    targets: Optional[str] = typer.Option(None, "--targets", "-t", help="Comma-separated: face,person,plate (default: all)."),
    preset: str = typer.Option("balanced", "--preset", "-p", help=option_help("preset"), show_default=False),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results to this file (default: stdout)."),
) -> None:
    """Detect objects and print (or write) their boxes in upright-image pixels.

    Photos only: one JSON document. With a video among the inputs: JSON lines, one per
    photo and one per video frame (with track ids).
    """
    from veil.detection.engine import get_engine  # here: the command line starts without the models
    from veil.imageio import load_image

    tg = parse_targets(targets, TARGETS)
    engine = get_engine(preset)
    files = collect_images(paths)
    if any(video_extension(f) for f, _root in files):
        _detect_lines(files, Options(targets=tg, preset=preset), engine, json_out)
        return
    results, failed = [], 0
    with Progress(TextColumn("detect"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("", total=len(files))
        for f, _root in files:
            try:
                img = load_image(f)
                dets = engine.detect(img.rgb, tg)
                results.append({"path": str(f), "width": img.width, "height": img.height, "detections": [d.to_json() for d in dets]})
            except VeilError as exc:
                failed += 1
                err_console.print(f"[red]skipped[/] {f}: {exc}", highlight=False, soft_wrap=True)
                results.append({"path": str(f), "error": str(exc)})
            bar.advance(task)
    text = json.dumps({"images": results}, indent=2)
    if json_out:
        atomic_write(json_out, text.encode())
        err_console.print(f"wrote {json_out} ({len(files) - failed} images, {failed} failed)")
    else:
        sys.stdout.write(text + "\n")
    if failed:
        raise typer.Exit(1)


def _detect_lines(files: list[tuple[Path, Path]], options: Options, engine, json_out: Path | None) -> None:
    """JSON lines for a mix of photos and videos (a video's frames do not fit one document)."""
    from veil.imageio import load_image

    failed = 0
    with contextlib.ExitStack() as stack:
        out = io.TextIOWrapper(stack.enter_context(atomic_file(json_out)), encoding="utf-8") if json_out else sys.stdout
        bar = stack.enter_context(Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                           TimeRemainingColumn(), console=err_console, transient=True))  # fmt: skip
        for f, _root in files:
            try:
                if video_extension(f):
                    detect_video_lines(f, options, out, engine, bar)
                else:
                    img = load_image(f)
                    dets = engine.detect(img.rgb, options.targets)
                    out.write(json.dumps({"path": str(f), "width": img.width, "height": img.height,
                                          "detections": [d.to_json() for d in dets]}) + "\n")  # fmt: skip
            except VeilError as exc:
                failed += 1
                err_console.print(f"[red]skipped[/] {f}: {exc}", highlight=False, soft_wrap=True)
                out.write(json.dumps({"path": str(f), "error": str(exc)}) + "\n")
        out.flush()
        if json_out:
            out.detach()
    if json_out:
        err_console.print(f"wrote {json_out} ({len(files) - failed} files, {failed} failed)")
    if failed:
        raise typer.Exit(1)
