"""Entry point of the ``veil`` command: each sub-command lives in its own module."""

from __future__ import annotations

import typer

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="veil: find faces, people and licence plates in photos and hide them.",
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from veil.cli import detect, evaluate, models

    app.add_typer(models.app, name="models", help="List, fetch and verify the detection models.")
    app.command("detect")(detect.detect)
    app.command("eval")(evaluate.evaluate)


_register()


def _register_server() -> None:
    from veil.cli import audit, keys, serve, submit, worker

    app.command("serve")(serve.serve)
    app.command("worker")(worker.worker)
    app.add_typer(keys.app, name="keys", help="Create, list and revoke API keys of 'veil serve'.")
    app.command("audit")(audit.audit)
    app.command("submit")(submit.submit)


_register_server()


def _register_anonymize() -> None:
    from veil.cli import anonymize

    app.command("anonymize")(anonymize.anonymize)


_register_anonymize()
