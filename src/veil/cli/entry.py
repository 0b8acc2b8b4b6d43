"""The ``veil`` command's entry point, free of imports on purpose.

A batch's worker processes are spawned, and a spawned process first re-imports the
parent's main script: for the installed ``veil`` command that is the one line importing
this module. Were it the command line itself (typer, rich, every command's module), each
worker would pay for it (~0.3 s) before its first photo.
"""

from __future__ import annotations


def main() -> None:
    from veil.cli.main import app

    app()
