"""What every ``lmforge`` command module shares: the stderr console and the error exit.

Kept apart from ``pipelines/cli.py`` because that module imports the command modules.
"""

from __future__ import annotations

import typer
from rich.console import Console

from stages.core.errors import LmforgeError

console = Console(stderr=True)  # tables and progress; stdout ends with one JSON line


def fail(exc: LmforgeError) -> typer.Exit:
    """One line on stderr and the error's exit code (2: bad input, 1: a stage failed), no traceback."""
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(exc.exit_code)
