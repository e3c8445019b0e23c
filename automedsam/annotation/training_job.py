"""A run of steps in the background of the annotation server (training from the page), with the state it polls.

Command steps are the automedsam commands a terminal user runs, each in a process of its own: the server keeps
answering while they work, a failure ends with the command's own message, and Stop ends the process at once. One
run at a time; its output also goes to a log file.
"""
from __future__ import annotations

import io
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, TextIO

from automedsam.errors import AutomedsamError

COMMAND_MODULES = {"automedsam_plan_and_preprocess": "automedsam.cli.plan_and_preprocess",
                   "automedsam_train": "automedsam.cli.train", "automedsam_predict": "automedsam.cli.predict"}
LAST_LINES = 12  # of output, shown on the page (the last says where a step is; on failure, they say why)
STOP_GRACE_S = 10.0  # after SIGTERM, before SIGKILL


# The commands' progress bars redraw one line ("\r", escape codes) when rich takes the pipe for a terminal: the page
# shows that line as it moves (the embeddings of preprocessing, the epochs), and the log keeps only finished lines.
LIVE_TERMINAL = {"PYTHONUNBUFFERED": "1", "COLUMNS": "160", "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1",
                 "NO_COLOR": "1"}
ESCAPE_CODE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
CURSOR_UP = re.compile(r"\x1b\[[0-9]*A")


class Output(Protocol):
    def __call__(self, line: str, *, live: bool = False) -> None:
        """Pass a finished output line on, or (`live`) the current state of a line being redrawn."""


def pass_on(stream: TextIO, output: Output) -> None:
    """Split a command's output, read with untranslated line endings, into finished lines and live redraws.

    A finished line is shown live at once but kept only once the next output shows it stays: a bar that ends prints
    its last state with a newline, then moves the cursor up over it and erases it (a transient bar); a redraw below
    it keeps it at once (an epoch's line printed above a running bar is kept then, not at the next epoch's)."""
    pending: str | None = None
    for segment in stream:
        if CURSOR_UP.search(segment):
            pending = None
        text = ESCAPE_CODE.sub("", segment.rstrip("\r\n")).rstrip()
        if pending is not None and (segment.endswith("\n") or text):
            output(pending)
            pending = None
        if segment.endswith("\n"):
            pending = text
            output(text, live=True)
        elif text:
            output(text, live=True)
    if pending is not None:
        output(pending)


class StepStopped(Exception):
    """Stop was asked for while the step ran."""


class Step(Protocol):
    title: str

    def run(self, output: Output, stop: threading.Event) -> None:
        """Do the step, passing each output line on; raise on failure, StepStopped once `stop` is set."""


@dataclass(frozen=True)
class CommandStep:
    """One automedsam command, run with this interpreter so that it is this installation's."""

    title: str
    command: str  # a key of COMMAND_MODULES
    arguments: tuple[str, ...]
    skip: Callable[[], str | None] | None = None  # asked when the step's turn comes: why to leave it out, or None

    def shell_line(self) -> str:
        return shlex.join([self.command, *self.arguments])

    def argv(self) -> list[str]:
        launch = (f"import sys; from {COMMAND_MODULES[self.command]} import main; sys.argv[0] = {self.command!r}; "
                  "main()")
        return [sys.executable, "-c", launch, *self.arguments]

    def run(self, output: Output, stop: threading.Event) -> None:
        reason = self.skip() if self.skip is not None else None
        if reason:
            output(reason)
            return
        output(f"$ {self.shell_line()}")
        # A session of its own: Stop ends the command's worker processes too, which hold its output pipe open.
        with subprocess.Popen(self.argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env={**os.environ, **LIVE_TERMINAL}, start_new_session=True) as process:
            threading.Thread(target=_end_on_stop, args=(process, stop), daemon=True).start()
            assert process.stdout is not None
            pass_on(io.TextIOWrapper(process.stdout, encoding="utf-8", errors="replace", newline=""), output)
            code = process.wait()
        if stop.is_set():
            raise StepStopped
        if code != 0:
            raise AutomedsamError(f"{self.shell_line()} failed (exit code {code}); its last lines say why.")


@dataclass(frozen=True)
class CallStep:
    """A step done in the server's own process (it changes what the server shows)."""

    title: str
    call: Callable[[Output, threading.Event], None]  # checks the event where it can stop, raising StepStopped
    undo: Callable[[Output], str | None] | None = None  # after a later step failed or stopped; says what it did

    def run(self, output: Output, stop: threading.Event) -> None:
        self.call(output, stop)


class TrainingJob:
    """At most one run of steps at a time; `status()` is what the page shows."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lines: deque[str] = deque(maxlen=LAST_LINES)
        self._state: dict[str, Any] = {"state": "idle"}

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, steps: Sequence[Step], *, run: str = "training") -> None:
        """Run `steps` in the background; `run` names the work for the page ("training", "review", ...)."""
        with self._lock:
            if self.running:
                raise AutomedsamError(f"{str(self._state.get('run', 'training')).capitalize()} is already running: "
                                      "wait for it to finish, or stop it first.")
            self._stop.clear()
            self._lines.clear()
            self._state = {"state": "running", "run": run, "step": 1, "steps": len(steps),
                           "title": steps[0].title if steps else "", "started": time.time(), "message": None,
                           "live": None}
            self._thread = threading.Thread(target=self._run, args=(list(steps),), name="automedsam-training",
                                            daemon=True)
            self._thread.start()

    def stop(self, *, wait_s: float = STOP_GRACE_S + 5) -> None:
        """End the run (its running command is terminated); returns once it has ended or `wait_s` has passed."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(wait_s)

    def status(self) -> dict[str, Any]:
        with self._lock:
            state = dict(self._state)
            state["lines"] = list(self._lines)
        if "started" in state:
            state["elapsed_s"] = round((state.pop("ended", None) or time.time()) - state.pop("started"), 1)
        state["log"] = str(self.log_path)
        return state

    def _run(self, steps: list[Step]) -> None:
        """The thread's body: whatever happens (a log that cannot be written included), the run ends in a state."""
        end: dict[str, Any] = {"state": "failed", "message": "The run ended unexpectedly: the server's terminal says "
                                                              "why."}
        try:
            end = self._run_steps(steps)
        except OSError as error:
            end = {"state": "failed", "message": f"Cannot write {self.log_path}: {error.strerror or error}."}
        finally:
            with self._lock:
                self._state.update(end, ended=time.time(), live=None)

    def _run_steps(self, steps: list[Step]) -> dict[str, Any]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')}: {len(steps)} steps\n")
            end = {"state": "finished", "message": None}
            done: list[Step] = []
            for index, step in enumerate(steps, start=1):
                with self._lock:
                    self._state.update(step=index, title=step.title, live=None)
                log.write(f"--- {index}/{len(steps)} {step.title}\n")
                try:
                    if self._stop.is_set():
                        raise StepStopped
                    step.run(self._output(log), self._stop)
                except StepStopped:
                    end = {"state": "stopped", "message": f"Stopped during: {step.title}."}
                except AutomedsamError as error:
                    end = {"state": "failed", "message": f"{step.title} failed: {error}"}
                except Exception as error:  # noqa: BLE001 - the server goes on; the page and the log say what broke
                    log.write(traceback.format_exc())
                    end = {"state": "failed", "message": f"{step.title} failed: {type(error).__name__}: {error} "
                                                         f"(details in {self.log_path})"}
                if end["state"] != "finished":
                    break
                done.append(step)
            if end["state"] != "finished":
                end["message"] = " ".join(_as_sentence(part) for part in [end["message"], *self._undone(done, log)])
            log.write(f"=== {end['state']}{': ' + end['message'] if end['message'] else ''}\n")
        return end

    def _undone(self, done: list[Step], log: TextIO) -> list[str]:
        """Undo the finished steps that can be undone, last first; what each says it did."""
        said = []
        for step in reversed(done):
            undo = getattr(step, "undo", None)
            if undo is None:
                continue
            try:
                message = undo(self._output(log))
            except Exception as error:  # noqa: BLE001 - the run has failed already; the page says this too
                log.write(traceback.format_exc())
                message = f"Undoing '{step.title}' failed: {type(error).__name__}: {error}."
            if message:
                said.append(message)
        return said

    def _output(self, log: TextIO) -> Output:
        def output(line: str, *, live: bool = False) -> None:
            if live:
                with self._lock:
                    self._state["live"] = line
                return
            log.write(line + "\n")
            log.flush()
            if line.strip():
                with self._lock:
                    self._lines.append(line)
        return output


def _as_sentence(text: str) -> str:
    """The page shows a failure and what was undone as one message: each part ends as a sentence."""
    return text if text.rstrip().endswith((".", "!", "?")) else f"{text.rstrip()}."


def _end_on_stop(process: subprocess.Popen, stop: threading.Event) -> None:
    """Terminate the process and its workers once `stop` is set (kill them if they do not end); return when it
    ends."""
    while process.poll() is None:
        if stop.wait(0.2):
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)  # workers that outlived their parent
            return


def _signal_group(process: subprocess.Popen, number: int) -> None:
    try:
        os.killpg(process.pid, number)
    except ProcessLookupError:  # every process of the group has ended
        pass
