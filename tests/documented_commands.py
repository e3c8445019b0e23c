"""Read the shell commands shown in the documentation and the options each console script really declares.

Used by tests/test_getting_started.py: a page's ```bash blocks are parsed with shlex, so `for ...; do CMD; done`
and `torchrun ... $(which CMD) ARGS` both yield CMD with its arguments. A block preceded by the line
`<!-- test: ... -->` is one the getting-started test runs as written.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import io
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import typer
import typer.testing

REPOSITORY = Path(__file__).resolve().parents[1]
PREFIX = "automedsam_"
TESTED_MARKER = "<!-- test:"
SEPARATORS = {";", "&&", "||", "|", "(", ")", "do", "then", "done", "&"}
_FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown page."""

    language: str
    lines: tuple[str, ...]
    tested: bool


@dataclass(frozen=True)
class Invocation:
    """One console-script call found in a shell line: `automedsam_convert folder --images x` ->
    script 'automedsam_convert', subcommand 'folder', options ('--images',)."""

    script: str
    subcommand: str | None
    options: tuple[str, ...]
    line: str


def code_blocks(page: Path) -> list[Block]:
    """Every fenced block of `page`, with whether the line before its opening fence is the test marker."""
    blocks: list[Block] = []
    language, lines, tested, previous = None, [], False, ""
    for line in page.read_text(encoding="utf-8").splitlines():
        fence = _FENCE.match(line.strip())
        if language is None and fence is not None:
            language, lines, tested = fence.group(1), [], previous.strip().startswith(TESTED_MARKER)
        elif language is not None and line.strip() == "```":
            blocks.append(Block(language, tuple(lines), tested))
            language = None
        elif language is not None:
            lines.append(line)
        if line.strip():
            previous = line
    return blocks


def shell_lines(page: Path, tested_only: bool = False) -> list[str]:
    """The non-comment lines of the page's bash blocks (only the marked ones with `tested_only`)."""
    return [line.strip() for block in code_blocks(page) if block.language == "bash"
            and (block.tested or not tested_only)
            for line in block.lines if line.strip() and not line.strip().startswith("#")]


def invocations(line: str, subcommands: dict[str, set[str]]) -> list[Invocation]:
    """The automedsam console-script calls in one shell line; `subcommands` maps a group script to its commands."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = _unwrap_which(list(lexer))
    found = []
    for segment in _segments(tokens):
        starts = [index for index, token in enumerate(segment) if token.startswith(PREFIX)]
        if not starts:
            continue
        script, args = segment[starts[0]], segment[starts[0] + 1:]
        subcommand = args[0] if args and args[0] in subcommands.get(script, set()) else None
        options = tuple(arg.split("=", 1)[0] for arg in args if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", arg))
        found.append(Invocation(script, subcommand, options, line))
    return found


def _unwrap_which(tokens: list[str]) -> list[str]:
    """`$ ( which CMD )` -> `CMD`, so the arguments after the substitution stay with CMD."""
    out: list[str] = []
    index = 0
    while index < len(tokens):
        if tokens[index:index + 3] == ["$", "(", "which"] and tokens[index + 4:index + 5] == [")"]:
            out.append(tokens[index + 3])
            index += 5
        else:
            out.append(tokens[index])
            index += 1
    return out


def _segments(tokens: list[str]) -> list[list[str]]:
    segments: list[list[str]] = [[]]
    for token in tokens:
        if token in SEPARATORS:
            segments.append([])
        else:
            segments[-1].append(token)
    return [segment for segment in segments if segment]


def console_scripts() -> dict[str, importlib.metadata.EntryPoint]:
    """The console scripts the installed automedsam package declares."""
    return {entry.name: entry for entry in importlib.metadata.entry_points(group="console_scripts")
            if entry.name.startswith(PREFIX) and entry.value.startswith("automedsam.")}


def script_module(entry: importlib.metadata.EntryPoint) -> ModuleType:
    entry.load()
    return sys.modules[entry.module]


def click_command(module: ModuleType) -> Any:
    """The click command behind a typer console script; None for a plain argparse script."""
    app = getattr(module, "app", None)
    return typer.main.get_command(app) if app is not None else None


def declared_options(module: ModuleType, subcommand: str | None = None) -> set[str]:
    """Every option name (`-d`, `--dataset`, ...) the script (or its subcommand) shows, help and version included;
    old names kept hidden for one release are left out (tests/test_option_names.py covers them)."""
    command = click_command(module)
    if command is None:
        return _argparse_options(module)
    if subcommand is not None:
        command = command.commands[subcommand]
    names = {name for param in command.params if not getattr(param, "hidden", False)
             for name in (*param.opts, *param.secondary_opts) if name.startswith("-")}
    return names | set(command.context_settings.get("help_option_names", ["--help"]))


def subcommands(module: ModuleType) -> set[str]:
    command = click_command(module)
    return set(getattr(command, "commands", {}))


def help_text(module: ModuleType, *args: str) -> tuple[int, str]:
    """Exit code and output of `SCRIPT [args] --help` (or any other arguments), run in this process."""
    command = click_command(module)
    if command is not None:
        result = typer.testing.CliRunner().invoke(module.app, list(args), terminal_width=120)
        return result.exit_code, result.output
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            module.main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, output.getvalue()


def _argparse_options(module: ModuleType) -> set[str]:
    """Option names of a plain argparse script, read from the invocation column of its --help."""
    _, text = help_text(module, "--help")
    options: set[str] = set()
    for line in text.splitlines():
        if line.lstrip().startswith("-"):
            invocation = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
            options.update(re.findall(r"(?<![\w-])-{1,2}[A-Za-z][\w-]*", invocation))
    return options
