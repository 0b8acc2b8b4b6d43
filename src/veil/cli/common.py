"""What every command shares: the consoles and turning user errors into clean exits."""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from veil.errors import VeilError

import sys

# Wide tables when piped (logs, CI); the terminal's own width otherwise.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable)


def user_errors(fn: F) -> F:
    """Show a :class:`VeilError` as one red line and exit with its code (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VeilError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)  # a [ in it is text
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def parse_targets(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    from veil.detection.types import TARGETS
    from veil.errors import OptionsError

    if not value:
        return default
    targets = tuple(dict.fromkeys(t.strip() for t in value.split(",") if t.strip()))
    for t in targets:
        if t not in TARGETS:
            raise OptionsError(f"unknown target {t!r}; choose from {', '.join(TARGETS)}", field="targets")
    return targets
