"""The progress every command shows: rich's bar on a terminal, plain timestamped lines in a log.

rich redraws its bar in place, which a file or pipe cannot show, so there it printed only the final state at the
end: a job under nohup, cron or a cluster scheduler gave no sign of life for as long as it ran. Where the console
cannot redraw a bar, each task prints a line when it starts, when it reaches another 10 % (at most one line per
5 s), after 30 s without a line if it moved (its count or its description), and when it finishes; closing the
display prints the last state of a task that never finished (a total not known, or a failure).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TaskID, TextColumn,
                           TimeRemainingColumn)

STEP_PERCENT = 10
MIN_GAP_S = 5.0
QUIET_S = 30.0


def progress_bar(enabled: bool = True, *, console: Console | None = None, columns: Sequence[ProgressColumn] = (),
                 transient: bool = False, clock: Callable[[], float] | None = None) -> LineProgress:
    """The display on stderr (or `console`): description, bar, count and time left unless `columns` says otherwise;
    prints nothing when not `enabled`. `clock`: seconds, monotonic (rich's get_time)."""
    columns = columns or (TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
                          MofNCompleteColumn(), TimeRemainingColumn())
    return LineProgress(*columns, console=console or Console(stderr=True), transient=transient,
                        disable=not enabled, get_time=clock)


@dataclass
class _Shown:
    """What a task's last line showed, and when."""

    origin: float  # completed when the task was added: time left is estimated from the steps made since
    at: float = 0.0
    completed: float = 0.0
    description: str = ""
    step: int = 0
    ended: bool = False

    def differs(self, task: Task) -> bool:
        """Whether the task moved (its count or its description) since this line."""
        return (task.completed, task.description) != (self.completed, self.description)


class LineProgress(Progress):
    """rich's Progress, printing plain lines instead of a bar where its console cannot redraw one (see the module)."""

    def __init__(self, *columns: ProgressColumn, console: Console, transient: bool, disable: bool,
                 get_time: Callable[[], float] | None) -> None:
        redraws = console.is_jupyter or (console.is_terminal and not console.is_dumb_terminal)
        self.prints_lines = not disable and not redraws
        super().__init__(*columns, console=console, transient=transient, get_time=get_time,
                         disable=disable or self.prints_lines)
        self._shown: dict[TaskID, _Shown] = {}

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        if self.prints_lines:
            with self._lock:
                task = self._tasks[task_id]
                self._shown[task_id] = _Shown(origin=task.completed)
                self._print(task)
        return task_id

    def update(self, task_id: TaskID, **changes: Any) -> None:
        super().update(task_id, **changes)
        self._follow(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._follow(task_id)

    def stop(self) -> None:
        if self.prints_lines:
            with self._lock:
                for task in self._tasks.values():
                    shown = self._shown[task.id]
                    if not shown.ended and shown.differs(task):
                        self._print(task, ending=f", ended after {_duration(task.elapsed or 0.0)}")
        super().stop()

    def _follow(self, task_id: TaskID) -> None:
        """Print the task's line if the rule in the module's docstring says one is due."""
        if not self.prints_lines:
            return
        with self._lock:
            task, shown = self._tasks[task_id], self._shown[task_id]
            if shown.ended:
                return
            quiet = self.get_time() - shown.at
            if task.finished:
                self._print(task, ending=f", done in {_duration(task.finished_time or 0.0)}")
            elif (_step(task) > shown.step and quiet >= MIN_GAP_S) or (shown.differs(task) and quiet >= QUIET_S):
                self._print(task, ending=_time_left(task, shown.origin))

    def _print(self, task: Task, *, ending: str = "") -> None:
        """`[12:03:55] Predicting case_012: 37/120 (30%), about 12 min left`, and remember what it showed."""
        count = f"{int(task.completed)}"
        if task.total is not None:
            count += f"/{int(task.total)} ({int(task.percentage)}%)"
        self.console.print(f"[{time.strftime('%H:%M:%S')}] {task.description}: {count}{ending}",
                           markup=False, highlight=False, soft_wrap=True)
        shown = self._shown[task.id]
        shown.at, shown.completed, shown.description = self.get_time(), task.completed, task.description
        shown.step, shown.ended = _step(task), task.finished


def _step(task: Task) -> int:
    """How many whole 10 % steps the task has made (0 while its total is not known)."""
    return int(task.percentage // STEP_PERCENT)


def _time_left(task: Task, origin: float) -> str:
    """`, about 12 min left` at the mean pace since the task was added; empty before anything moved."""
    made = task.completed - origin
    if task.total is None or made <= 0 or not task.elapsed:
        return ""
    return f", about {_duration(task.elapsed * (task.total - task.completed) / made)} left"


def _duration(seconds: float) -> str:
    """`90 s`, `12 min`, `2 h 05 min`: as precise as a log line read in passing needs."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"
