"""``veil eval``: score the detectors on labelled photos with the project metric."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from veil.cli.common import console, err_console, parse_targets, user_errors
from veil.detection.engine import get_engine
from veil.evaluation.labels import load_labels, targets_in
from veil.evaluation.metric import BUCKETS
from veil.evaluation.runner import evaluate as run_eval


def _pct(v) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}%"


@user_errors
def evaluate(
    labels: Path = typer.Argument(..., help="labels.json of a labelled photo set."),
    targets: Optional[str] = typer.Option(None, "--targets", "-t", help="Targets to score (default: those labelled)."),
    preset: str = typer.Option("balanced", "--preset", "-p", help="fast, balanced or thorough."),
    margin: float = typer.Option(1.3, "--margin", help="Face box growth applied before scoring, as the anonymizer hides it (1.0 = raw boxes)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Recall (coverage >= 50%) overall and by height, boxes per image, precision, latency."""
    images = load_labels(labels)
    tg = parse_targets(targets, tuple(targets_in(images)) or ("face",))
    engine = get_engine(preset)
    with Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("", total=len(images))
        result = run_eval(engine, images, tg, face_margin=margin, progress=lambda n: bar.update(task, completed=n))
    data = result.to_json()
    data["labels"] = str(labels)
    if as_json:
        console.print_json(json.dumps(data))
        return
    table = Table(title=f"{labels} - preset {preset} - {data['images']} images - median {data['median_ms_per_image']:.0f} ms/img")
    for col in ["target", "labelled", "recall"] + [f"h {b[0]}" for b in BUCKETS] + [">=16px", ">=32px", "boxes/img", "precision"]:
        table.add_column(col, justify="right")
    for t, s in data["targets"].items():
        table.add_row(
            t,
            str(s["labelled"]),
            _pct(s["recall"]),
            *[f"{_pct(s['recall_by_height'][b[0]])} ({s['count_by_height'][b[0]]})" for b in BUCKETS],
            _pct(s["recall_16px_up"]),
            _pct(s["recall_32px_up"]),
            f"{s['boxes_per_image']:.2f}",
            _pct(s["precision"]),
        )
    console.print(table)
