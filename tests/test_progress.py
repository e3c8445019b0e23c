"""Progress in a log: rich drew nothing into a file or pipe until the end, so a 43-minute prediction under nohup
looked the same as a hung one. Where the console is no terminal, plain lines come while the work runs."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from rich.console import Console

from automedsam.foundation.cache import EmbeddingCache
from automedsam.progress import progress_bar

LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] (.*)$")


class Clock:
    """Seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def log_console() -> tuple[Console, io.StringIO]:
    """A console writing to a file, as under nohup or a cluster job."""
    written = io.StringIO()
    return Console(file=written, width=60), written


def lines(written: io.StringIO) -> list[str]:
    """The plain lines written so far, without their time of day (every line must carry one)."""
    matches = [LINE.match(line) for line in written.getvalue().splitlines()]
    assert all(matches), written.getvalue()
    return [match.group(1) for match in matches]


def test_a_log_gets_a_line_at_each_10_percent_while_the_work_runs() -> None:
    console, written = log_console()
    clock = Clock()
    with progress_bar(console=console, clock=clock) as bar:
        task = bar.add_task("Samples", total=100)
        assert lines(written) == ["Samples: 0/100 (0%)"]
        for _ in range(50):
            clock.now += 1.0
            bar.advance(task)
        assert lines(written)[1:] == [f"Samples: {done}/100 ({done}%), about {100 - done} s left"
                                      for done in range(10, 60, 10)]
        for _ in range(50):
            clock.now += 1.0
            bar.advance(task)
    assert lines(written)[-1] == "Samples: 100/100 (100%), done in 100 s"
    assert len(lines(written)) == 11


def test_10_percent_steps_closer_than_5_s_print_one_line() -> None:
    console, written = log_console()
    clock = Clock()
    with progress_bar(console=console, clock=clock) as bar:
        task = bar.add_task("Views", total=100)
        for done in range(1, 101):
            clock.now = done / 10
            bar.update(task, advance=1)
    assert lines(written) == ["Views: 0/100 (0%)", "Views: 50/100 (50%), about 5 s left",
                              "Views: 100/100 (100%), done in 10 s"]


def test_slow_work_gets_a_line_after_30_s_showing_the_latest_description() -> None:
    """A volume moves the bar by slices, far below 10 % of the run: its slices still show every 30 s."""
    console, written = log_console()
    clock = Clock()
    with progress_bar(console=console, clock=clock) as bar:
        task = bar.add_task("Predicting", total=2)
        bar.update(task, description="Predicting case_000", completed=0)
        for done in range(1, 7):
            clock.now += 12.0
            bar.update(task, description=f"Predicting case_000: slice {done}/100", completed=done / 100)
        clock.now += 40.0
        bar.update(task, description="Predicting case_000: slice 6/100")
        assert lines(written) == ["Predicting: 0/2 (0%)",
                                  "Predicting case_000: slice 3/100: 0/2 (1%), about 39 min left",
                                  "Predicting case_000: slice 6/100: 0/2 (3%), about 39 min left"]
        clock.now += 40.0
        bar.update(task, description="Predicting case_001")
    assert lines(written)[3:] == ["Predicting case_001: 0/2 (3%), about 1 h 22 min left"]


def test_work_of_unknown_length_ends_with_its_last_count() -> None:
    console, written = log_console()
    clock = Clock()
    with progress_bar(console=console, clock=clock) as bar:
        task = bar.add_task("litemedsam embeddings", total=None)
        for _ in range(3):
            clock.now += 2.0
            bar.advance(task)
    assert lines(written) == ["litemedsam embeddings: 0", "litemedsam embeddings: 3, ended after 6 s"]


def test_a_terminal_gets_riches_bar_and_no_lines() -> None:
    written = io.StringIO()
    with progress_bar(console=Console(file=written, width=60, force_terminal=True), transient=True) as bar:
        task = bar.add_task("Samples", total=4)
        for _ in range(4):
            bar.advance(task)
    shown = written.getvalue()
    assert "\u2501" in shown and "4/4" in shown and "\x1b[?25l" in shown  # the bar, redrawn with the cursor hidden
    assert not re.search(r"\[\d\d:\d\d:\d\d\]", shown)
    assert shown.endswith("\x1b[?25h\r\x1b[1A\x1b[2K"), "a transient bar erases itself at the end"


def test_a_disabled_display_prints_nothing() -> None:
    console, written = log_console()
    with progress_bar(False, console=console, clock=Clock()) as bar:
        task = bar.add_task("Samples", total=3)
        for _ in range(3):
            bar.advance(task)
    assert written.getvalue() == ""


class FakeModel:
    """Stands in for a FoundationModel; what stderr held when it was first asked to encode is kept."""

    name = "fake"

    def __init__(self, capsys: pytest.CaptureFixture) -> None:
        self.capsys = capsys
        self.stderr_before: list[str] = []

    def prepare(self, image2d: np.ndarray) -> tuple[torch.Tensor, None]:
        return torch.full((3, 8, 8), float(np.mean(image2d))), None

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.stderr_before.append(self.capsys.readouterr().err)
        return torch.zeros((images.shape[0], 256, 64, 64))


def test_computing_embeddings_into_a_log_shows_a_line_before_the_end(tmp_path, capsys: pytest.CaptureFixture) -> None:
    """stderr under pytest is no terminal, as under nohup."""
    model = FakeModel(capsys)
    items = [(f"case{i}", np.full((20, 20), i, dtype=np.float32)) for i in range(4)]
    assert EmbeddingCache(tmp_path, "fake").compute_missing(model, items, batch_size=2) == 4
    assert [line.split("] ", 1)[1] for line in model.stderr_before[0].splitlines()] == ["fake embeddings: 0/4 (0%)"]
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] fake embeddings: 4/4 \(100%\), done in \d+ s\n", capsys.readouterr().err)
