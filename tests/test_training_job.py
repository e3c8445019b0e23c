"""The annotation page's background job: steps run in order, a failing command ends the run with its own message,
Stop ends a running command at once, one run at a time, and the log keeps what happened."""
from __future__ import annotations

import io
import json
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from automedsam.annotation.retraining import _bring_back
from automedsam.annotation.training_job import CallStep, CommandStep, TrainingJob, pass_on
from automedsam.errors import AutomedsamError
from automedsam.trained_models import keep_previous

WAIT_S = 60


def wait_until_ended(job: TrainingJob) -> dict:
    deadline = time.monotonic() + WAIT_S
    while job.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not job.running, "the job did not end"
    return job.status()


def recording(title: str, done: list[str]) -> CallStep:
    def call(output, stop):
        output(f"{title} says hello")
        done.append(title)
    return CallStep(title, call)


def test_steps_run_in_order_and_the_log_keeps_their_output(tmp_path: Path):
    done: list[str] = []
    job = TrainingJob(tmp_path / "job.log")
    job.start([recording("first", done), recording("second", done)])
    status = wait_until_ended(job)
    assert done == ["first", "second"]
    assert status["state"] == "finished" and status["step"] == 2 and status["lines"][-1] == "second says hello"
    log = (tmp_path / "job.log").read_text()
    assert "--- 1/2 first" in log and "first says hello" in log and "=== finished" in log


def test_a_failing_command_ends_the_run_with_its_message_and_skips_the_rest(tmp_path: Path, roots):
    done: list[str] = []
    job = TrainingJob(tmp_path / "job.log")
    job.start([CommandStep("Training fold 1 of 1", "automedsam_train", ("Dataset998_Nothing", "0")),
               recording("after", done)])
    status = wait_until_ended(job)
    assert status["state"] == "failed" and done == []
    assert status["message"].startswith("Training fold 1 of 1 failed: automedsam_train Dataset998_Nothing 0 failed")
    assert any(line.startswith("Error:") and "Dataset998" in line for line in status["lines"])
    assert "Traceback" not in (tmp_path / "job.log").read_text()


def test_a_command_that_succeeds_passes_its_output_on(tmp_path: Path):
    job = TrainingJob(tmp_path / "job.log")
    job.start([CommandStep("Help", "automedsam_train", ("--help",))])
    status = wait_until_ended(job)
    log = (tmp_path / "job.log").read_text()
    assert status["state"] == "finished" and status["lines"][-1].strip().startswith("-h, --help")
    assert "$ automedsam_train --help\nUsage: automedsam_train [OPTIONS]" in log


def test_stop_ends_a_running_command_at_once(tmp_path: Path, monkeypatch):
    sleeper = [sys.executable, "-c", "import time; print('working', flush=True); time.sleep(120)"]
    monkeypatch.setattr(CommandStep, "argv", lambda self: sleeper)
    done: list[str] = []
    job = TrainingJob(tmp_path / "job.log")
    job.start([CommandStep("Training fold 1 of 5", "automedsam_train", ()), recording("after", done)])
    deadline = time.monotonic() + WAIT_S
    while job.status().get("live") != "working" and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(AutomedsamError, match="already running"):
        job.start([recording("another", done)])
    began = time.monotonic()
    job.stop()
    status = job.status()
    assert time.monotonic() - began < 10 and not job.running
    assert status["state"] == "stopped" and status["message"] == "Stopped during: Training fold 1 of 5."
    assert done == []


def test_an_unexpected_error_fails_the_run_and_the_log_has_its_traceback(tmp_path: Path):
    def broken(output, stop):
        raise ValueError("no such thing")
    job = TrainingJob(tmp_path / "job.log")
    job.start([CallStep("Ranking", broken)])
    status = wait_until_ended(job)
    assert status["state"] == "failed" and "ValueError: no such thing" in status["message"]
    assert "Traceback" in (tmp_path / "job.log").read_text()
    finished = threading.Event()
    job.start([CallStep("Again", lambda output, stop: finished.set())])
    assert wait_until_ended(job)["state"] == "finished" and finished.is_set()


def test_a_redrawn_progress_bar_is_shown_live_and_only_finished_lines_are_kept():
    """What rich writes to a pipe it takes for a terminal: redraws end in a carriage return, printed lines in a
    newline, both wrapped in escape codes; a transient bar's last state ends in a newline, then the cursor moves up
    over it."""
    written = (b"\x1b[?25l\r\x1b[2Kembeddings \x1b[90m\xe2\x94\x81\xe2\x94\x81\x1b[0m 1/10\r"
               b"\x1b[2Kepoch 1 \x1b[1mbest\x1b[0m\n"
               b"embeddings \xe2\x94\x81\xe2\x94\x81 2/10\r\x1b[2Kembeddings 10/10\n\x1b[?25h\r\x1b[1A\x1b[2K"
               b"Finished\n")
    received: list[tuple[str, bool]] = []
    pass_on(io.TextIOWrapper(io.BytesIO(written), encoding="utf-8", newline=""),
            lambda line, live=False: received.append((line, live)))
    kept = [line for line, live in received if not live]
    shown = [line for line, live in received if live]
    assert kept == ["epoch 1 best", "Finished"]
    assert shown == ["embeddings \u2501\u2501 1/10", "epoch 1 best", "embeddings \u2501\u2501 2/10", "embeddings 10/10",
                     "Finished"]
    assert received.index(("epoch 1 best", False)) < received.index(("embeddings \u2501\u2501 2/10", True)), \
        "a line printed above a running bar is kept once the bar is drawn below it, not at the next printed line"


def test_a_commands_progress_bar_reaches_the_status_while_it_runs(tmp_path: Path, monkeypatch):
    """A command drawing a rich progress bar into the job's pipe: the status shows the bar moving, the log does
    not keep its redraws."""
    script = ("import time; from rich.progress import Progress\n"
              "with Progress(transient=True) as bar:\n"
              "    task = bar.add_task('embeddings', total=40)\n"
              "    for _ in range(40):\n"
              "        time.sleep(0.1); bar.advance(task)\n"
              "print('written')\n")
    monkeypatch.setattr(CommandStep, "argv", lambda self: [sys.executable, "-c", script])
    job = TrainingJob(tmp_path / "job.log")
    job.start([CommandStep("Preprocessing the boxes", "automedsam_plan_and_preprocess", ())])
    seen = set()
    while job.running:
        live = job.status().get("live")
        if live:
            seen.add(live.split()[0])
        time.sleep(0.05)
    status = job.status()
    assert status["state"] == "finished" and "embeddings" in seen and status["live"] is None
    log = (tmp_path / "job.log").read_text()
    assert "written" in log and "embeddings" not in log and "\x1b" not in log


def test_stop_also_ends_the_commands_worker_processes(tmp_path: Path, monkeypatch):
    """Preprocessing hands work to worker processes, which hold the command's output open: stopping the command
    alone left the job waiting on that output for good, and the workers running."""
    pid_file = tmp_path / "worker.pid"
    script = ("import subprocess, sys, time\n"
              "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
              f"open({str(pid_file)!r}, 'w').write(str(worker.pid))\n"
              "print('working', flush=True)\n"
              "time.sleep(120)\n")
    monkeypatch.setattr(CommandStep, "argv", lambda self: [sys.executable, "-c", script])
    job = TrainingJob(tmp_path / "job.log")
    job.start([CommandStep("Preprocessing the boxes", "automedsam_plan_and_preprocess", ())])
    deadline = time.monotonic() + WAIT_S
    while job.status().get("live") != "working" and time.monotonic() < deadline:
        time.sleep(0.05)
    job.stop()
    assert not job.running and job.status()["state"] == "stopped"
    worker = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{worker}").exists() and "Z" not in Path(f"/proc/{worker}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline, "the worker outlived the stopped command"
        time.sleep(0.05)


def test_a_log_that_cannot_be_written_fails_the_run_instead_of_leaving_it_running(tmp_path: Path):
    (tmp_path / "a file").write_text("")
    job = TrainingJob(tmp_path / "a file" / "job.log")
    job.start([CallStep("Ranking", lambda output, stop: None)])
    status = wait_until_ended(job)
    assert status["state"] == "failed" and status["message"].startswith(f"Cannot write {tmp_path / 'a file'}")


def test_a_failed_run_undoes_its_finished_steps_last_first_and_a_finished_run_undoes_nothing(tmp_path: Path):
    undone: list[str] = []

    def undoable(title: str) -> CallStep:
        return CallStep(title, lambda output, stop: None,
                        undo=lambda output: undone.append(title) or f"{title} undone.")

    def failing(output, stop):
        raise AutomedsamError("it broke")

    job = TrainingJob(tmp_path / "job.log")
    job.start([undoable("first"), undoable("second"), CallStep("third", failing), undoable("never run")])
    status = wait_until_ended(job)
    assert status["state"] == "failed" and undone == ["second", "first"]
    assert status["message"] == "third failed: it broke. second undone. first undone."
    job.start([undoable("alone")])
    assert wait_until_ended(job)["state"] == "finished" and undone == ["second", "first"]


def test_a_train_that_ends_before_every_fold_puts_the_model_trained_before_back(tmp_path: Path):
    """Stop (or a failure) during fold 0 left the page with no model (the old one in previous/, unseen) and during a
    later fold with a partial one that Download model and Segment images then used."""
    results, preprocessed = tmp_path / "results" / "Dataset011_Toys", tmp_path / "preprocessed"
    preprocessed.mkdir(parents=True)
    (preprocessed / "splits.json").write_text(json.dumps({"seed": 0, "shots": 2, "labelled": ["a", "b"], "folds": [
        {"train": ["a"], "val": ["b"]}, {"train": ["b"], "val": ["a"]}]}))
    model = results / "default__automedsamPlans"

    def folds(*finished: int) -> None:
        (model / "plans.json").parent.mkdir(parents=True, exist_ok=True)
        (model / "plans.json").write_text("{}")
        for fold in finished:
            (model / f"fold_{fold}").mkdir()
            (model / f"fold_{fold}" / "checkpoint_final.pt").write_bytes(b"weights")

    session = SimpleNamespace(preprocessed_dir=preprocessed)
    folds(0, 1)
    kept = {"model": model, "previous": keep_previous(model)}
    folds(0)  # the new model: fold 1 never finished
    message = _bring_back(session, kept, lambda line, live=False: None)
    assert (model / "fold_1" / "checkpoint_final.pt").is_file(), "the old model, both folds, is back"
    partial = results / "previous" / "default__automedsamPlans_2"
    assert message.endswith(f"kept in {partial}.") and not (partial / "fold_1").exists()
    kept = {"model": model, "previous": keep_previous(model)}
    folds(0, 1)  # every fold finished, the review after them failed: the new model stays
    assert _bring_back(session, kept, lambda line, live=False: None) is None and kept["previous"].is_dir()
