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
    """Run a typer app; a user error becomes one readable message and exit code 2, never a traceback."""
    try:
        app(standalone_mode=False)
    except AutomedsamError as exc:
        console.print(f"[bold red]Error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted.[/yellow] Finished outputs are kept; rerun the same command to finish the rest.")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.print("Aborted.")
        sys.exit(1)
    except Exception as exc:  # click usage errors arrive here with standalone_mode=False
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
