"""What every command shares: clean error reporting, --version, old option names kept for one release."""
from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from automedsam import __version__
from automedsam.errors import AutomedsamError
from automedsam.files import permission_denied_error, too_long_reason

console = Console(stderr=True)
INTERRUPTED = 130  # the exit code typer gives a run stopped by Ctrl-C (SIGINT)
# What a rerun does after Ctrl-C: commands whose note differs pass their own to run_app
INTERRUPTED_NOTE = "Interrupted. Finished work is kept: run the same command again to complete the rest."
Value = TypeVar("Value")
_FREE_SPACE = "Free some space or choose another location"
# A disk that refuses any write, met where no writer of ours reported it: the user's to fix, with this advice
_DISK_ADVICE = {errno.EROFS: "Choose a location you can write to", errno.ENOSPC: _FREE_SPACE, errno.EDQUOT: _FREE_SPACE}


def version_callback(value: bool) -> None:
    """Eager `--version` option shared by all commands."""
    if value:
        typer.echo(f"automedsam {__version__}")
        raise typer.Exit()


VersionOption = typer.Option(
    None, "--version", callback=version_callback, is_eager=True, help="Show the automedsam version and exit."
)


def deprecated_option(*old_names: str, new: str, **settings: Any) -> Any:
    """A hidden option under an option's old name(s), still accepted for one release; read it with `renamed`."""
    return typer.Option(None, *old_names, hidden=True, help=f"Old name of {new}.", **settings)


PREDICTION_CHECKPOINTS = ("best", "final")  # automedsam_predict --checkpoint, not the foundation's old option


def renamed(value: Value | None, old_value: Value | None, *, old: str, new: str) -> Value | None:
    """The option's value, given under its new name or (with one deprecation line on stderr) under its old one."""
    if old_value is None:
        return value
    if value is not None:
        raise AutomedsamError(f"{old} is the old name of {new}; give only {new}.")
    if old == "--checkpoint" and str(old_value) in PREDICTION_CHECKPOINTS:
        raise AutomedsamError(f"--checkpoint {old_value} chooses the weights automedsam_predict loads (training "
                              f"writes both best and final); here --checkpoint is the old name of {new}, the "
                              "foundation model's weights file.")
    console.print(f"Deprecated: {old} is now {new}; the old name will stop working in a later release.",
                  markup=False, highlight=False, soft_wrap=True)
    return old_value


def run_app(app: Callable[..., object], *, interrupted_note: str | Callable[[], str] = INTERRUPTED_NOTE) -> None:
    """Run a typer app; a user error (or a path the file system refuses: no permission, a read-only or full disk, a
    name too long) becomes one readable message and exit code 2, never a traceback.

    The message is escaped, since it quotes boxes like [x0, y0, x1, y1] and paths that rich would take for markup.
    Usage errors (unknown option, bad value) are reported by click itself, also with exit code 2. Ctrl-C, a kill
    (SIGTERM) or a closed terminal end the command with exit code 130 and a note that says what a rerun does (every
    writer is atomic, so no half-written file is left); a callable note is worded when it is printed.
    """
    try:
        with stopped_like_ctrl_c():
            app()
    except AutomedsamError as exc:
        console.print(f"[bold red]Error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except PermissionError as exc:  # the file system's refusal, wherever it is met: the user's to fix, not a bug
        console.print(f"[bold red]Error:[/bold red] {escape(_permission_message(exc))}", highlight=False,
                      soft_wrap=True)
        sys.exit(2)
    except OSError as exc:
        if exc.errno not in _DISK_ADVICE and not _named_too_long(exc):
            raise
        message = _disk_message(exc) if exc.errno in _DISK_ADVICE else _too_long_message(exc)
        console.print(f"[bold red]Error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except SystemExit as exc:
        if exc.code == INTERRUPTED:
            note = interrupted_note() if callable(interrupted_note) else interrupted_note
            console.print(note, markup=False, highlight=False, soft_wrap=True)
        raise


def _permission_message(error: PermissionError) -> str:
    """What a refused read or write tells the user: the path the system refused and what to do."""
    return str(permission_denied_error(error.filename))


def _disk_message(error: OSError) -> str:
    """A read-only, full or over-quota disk: the path the system named, what it said, and what to do."""
    where = error.filename if error.filename is not None else "a file"
    return f"Cannot write {where}: {error.strerror}. {_DISK_ADVICE[error.errno]}, then run the command again."


def _named_too_long(error: OSError) -> bool:
    """A path the file system refuses as too long, met before any writer of ours (Path.is_dir() and Path.exists()
    raise it in Python 3.11): a name the user typed, not a bug."""
    return error.errno == errno.ENAMETOOLONG and error.filename is not None


def _too_long_message(error: OSError) -> str:
    """The path the system refused as too long, the name at fault in it, and what to do."""
    path = os.fsdecode(error.filename)
    return f"Cannot use {path}: {too_long_reason(path)}"


@contextmanager
def stopped_like_ctrl_c() -> Iterator[None]:
    """A kill (SIGTERM) or a closed terminal (SIGHUP, unless started with nohup) stops the command as Ctrl+C does, so
    that its clean-up runs: a conversion's or an install's hidden staging folder, a half-written file, a training
    command the annotation page started, would otherwise stay behind. Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _interrupt)}
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, _interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
