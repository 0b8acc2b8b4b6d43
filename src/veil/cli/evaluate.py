"""``veil eval``: score the detectors on labelled photos with the project metric."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from veil.cli.common import console, err_console, parse_targets, user_errors
from veil.evaluation.labels import load_labels, targets_in
from veil.evaluation.metric import BUCKETS
from statistics import median

from veil.pipeline.options import option_help


def _pct(v) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}%"


@user_errors
def evaluate(
    labels: list[Path] = typer.Argument(..., help="labels.json of one or more labelled photo sets (several are also scored pooled)."),
    targets: Optional[str] = typer.Option(None, "--targets", "-t", help="Targets to score (default: those labelled)."),
    preset: str = typer.Option("balanced", "--preset", "-p", help=option_help("preset"), show_default=False),
    margin: float = typer.Option(1.3, "--margin", help="Face box growth applied before scoring, as the anonymizer hides it (1.0 = raw boxes)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Recall (coverage >= 50%) overall and by height, boxes per image, precision, latency."""
    from veil.detection.engine import get_engine  # here: the command line starts without the models
    from veil.evaluation.runner import evaluate as run_eval, pooled

    sets = [(str(p), load_labels(p)) for p in dict.fromkeys(labels)]
    all_images = [im for _, ims in sets for im in ims]
    tg = parse_targets(targets, tuple(targets_in(all_images)) or ("face",))
    engine = get_engine(preset)
    results = {}
    with Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("", total=len(all_images))
        done = 0
        for name, images in sets:
            results[name] = run_eval(engine, images, tg, face_margin=margin, progress=lambda n: bar.update(task, completed=done + n))
            done += len(images)
    if len(sets) > 1:
        results["all"] = pooled(list(results.values()))
    data = {"preset": preset, "face_margin": margin, "sets": {k: v.to_json() for k, v in results.items()}}
    if as_json:
        console.print_json(json.dumps(data))
        return
    times = [t for name, _ in sets for t in results[name].ms_per_image]
    table = Table(title=f"preset {preset} - {len(times)} images - median {median(times):.0f} ms/img - face margin {margin}")
    for col in ["set", "target", "labelled", "recall"] + [f"h {b[0]}" for b in BUCKETS] + [">=16px", ">=32px", "boxes/img", "precision", "ms/img"]:
        table.add_column(col, justify="right")
    for name, res in data["sets"].items():
        for t, s in res["targets"].items():
            table.add_row(
                name if name == "all" else (Path(name).parent.name if Path(name).name == "labels.json" else Path(name).stem),
                t,
                str(s["labelled"]),
                _pct(s["recall"]),
                *[f"{_pct(s['recall_by_height'][b[0]])} ({s['count_by_height'][b[0]]})" for b in BUCKETS],
                _pct(s["recall_16px_up"]),
                _pct(s["recall_32px_up"]),
                f"{s['boxes_per_image']:.2f}",
                _pct(s["precision"]),
                f"{res['median_ms_per_image']:.0f}" if res["median_ms_per_image"] else "-",
            )
    console.print(table)
