"""How every command ends on an error: one readable message and exit code 2, never a traceback (cli.common)."""
from __future__ import annotations

import errno

import pytest
import typer

from automedsam.cli.common import run_app
from automedsam.errors import AutomedsamError


def failing_app(error: Exception) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def command() -> None:
        raise error
    return app


@pytest.mark.parametrize("error, expected", [
    (AutomedsamError("The dataset [1] is missing."), "Error: The dataset [1] is missing."),
    (PermissionError(errno.EACCES, "Permission denied", "/data/locked/out"),
     "Error: Permission denied for /data/locked/out: this user may not read, write or enter it."),
])
def test_a_user_error_or_a_refused_path_ends_with_one_message_and_exit_code_2(error, expected, monkeypatch, capsys):
    """A folder the user may not enter (Path.exists() raises PermissionError in Python 3.11, before any check of
    ours can say so) ended a command with a traceback."""
    monkeypatch.setattr("sys.argv", ["automedsam_command"])
    with pytest.raises(SystemExit) as ended:
        run_app(failing_app(error))
    assert ended.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert expected in err and "Traceback" not in err


def test_an_unexpected_error_is_not_dressed_as_the_users(monkeypatch):
    """A bug must keep its traceback: only the user's errors are turned into a message."""
    monkeypatch.setattr("sys.argv", ["automedsam_command"])
    with pytest.raises(KeyError):
        run_app(failing_app(KeyError("bug")))
