"""``veil models list|fetch|verify``."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from veil.cli.common import console, err_console, user_errors
from veil.models.registry import MODELS, get_spec
from veil.models.store import default_store, permissive_only

app = typer.Typer(no_args_is_help=True)


@app.command("list")
@user_errors
def list_models() -> None:
    """Show every model with its source package, licence and whether it is ready."""
    store = default_store()
    table = Table(title=f"veil models (cache: {store.home})")
    for col in ("name", "targets", "source package", "licence", "ready", "about"):
        table.add_column(col)
    for spec in MODELS:
        st = store.status(spec.name)
        usable = spec.permissive or not permissive_only()
        ready = "[green]yes[/]" if st.ready else f"[yellow]no[/] ({st.detail})"
        if not usable:
            ready += " [red](disabled: VEIL_LICENSES=permissive)[/]"
        table.add_row(spec.name, ",".join(spec.targets), spec.source, spec.license, ready, spec.description)
    console.print(table)


@app.command("fetch")
@user_errors
def fetch(
    names: Optional[list[str]] = typer.Argument(None, help="Models to fetch (default: all)."),
    force: bool = typer.Option(False, "--force", help="Download and convert again even if cached."),
) -> None:
    """Download, check (SHA-256) and convert models into the cache; afterwards veil runs offline."""
    store = default_store()
    specs = [get_spec(n) for n in names] if names else list(MODELS)
    if permissive_only() and not names:
        specs = [s for s in specs if s.permissive]
    for spec in specs:
        with err_console.status(f"fetching {spec.name} from {spec.source} ..."):
            store.fetch(spec.name, force=force)
        console.print(f"[green]ready[/] {spec.name} ({spec.license})")


@app.command("verify")
@user_errors
def verify(names: Optional[list[str]] = typer.Argument(None, help="Models to check (default: all fetched).")) -> None:
    """Re-check cached models against their pinned hashes; exit 3 if any fails."""
    store = default_store()
    specs = [get_spec(n) for n in names] if names else [s for s in MODELS if store.status(s.name).detail != "not fetched"]
    bad = 0
    for spec in specs:
        ok, why = store.verify(spec.name)
        bad += not ok
        console.print(f"{'[green]ok[/]' if ok else '[red]FAILED[/]'} {spec.name}: {why}")
    if not specs:
        console.print("no models fetched yet (run: veil models fetch)")
    if bad:
        raise typer.Exit(3)
