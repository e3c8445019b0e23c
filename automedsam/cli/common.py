"""What every command shares: clean error reporting, --version, the device option."""
from __future__ import annotations

import sys
from typing import Callable

import typer
from rich.console import Console

from automedsam import __version__
from automedsam.errors import AutomedsamError

console = Console(stderr=True)


def version_callback(value: bool) -> None:
    """Eager `--version` option shared by all commands."""
    if value:
        typer.echo(f"automedsam {__version__}")
        raise typer.Exit()


VersionOption = typer.Option(
    None, "--version", callback=version_callback, is_eager=True, help="Show the automedsam version and exit."
)


def run_app(app: Callable[..., object]) -> None:
    """Run a typer app; a user error becomes one readable message and exit code 2, never a traceback.

    Usage errors (unknown option, bad value) are reported by click itself, also with exit code 2; click turns
    Ctrl-C into "Aborted!" and exit code 1, and every writer is atomic, so a rerun finishes the rest.
    """
    try:
        app()
    except AutomedsamError as exc:
        console.print(f"[bold red]Error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
