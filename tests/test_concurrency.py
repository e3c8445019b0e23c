"""Concurrent and failing workers: two predictions into one folder stay intact, and a preprocessing worker that
dies (killed, out of memory) stops the run with a clear error instead of a hang."""
from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest
from PIL import Image

import automedsam.planning.fingerprint as fingerprint
from automedsam.cli import plan_and_preprocess as plan_cli
from automedsam.errors import AutomedsamError
from automedsam.parallel import parallel_map
from pipeline_runs import Roots, assert_same_tree, complete_files, run, start
from synthetic_raw import make_2d_masks
from toy_model import shared_foundation, toy_image, write_model_folder

HANG_LIMIT_S = 120
IMAGES = 4


def die(job: object) -> None:
    """A worker that vanishes the way an out-of-memory kill does: no exception, no cleanup."""
    os._exit(9)


@pytest.fixture
def no_hang():
    """Fail the test, instead of blocking the suite, if the code under test hangs."""
    def give_up(signum, frame):
        raise TimeoutError(f"still running after {HANG_LIMIT_S} s: a dead worker made the run hang")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(HANG_LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_parallel_map_reports_a_dead_worker(no_hang):
    with pytest.raises(AutomedsamError, match="A worker process died during 'Samples'.*-np 1"):
        parallel_map(die, list(range(6)), num_workers=2, description="Samples", progress=False)


def fail_first(job: tuple[int, str]) -> int:
    """Job 0 fails at once; every other job marks that it started, then takes a while."""
    import time

    index, folder = job
    if index == 0:
        raise ValueError("case 0 is damaged")
    open(os.path.join(folder, f"started{index}"), "w").close()
    time.sleep(0.5)
    return index


def test_a_failing_job_stops_the_run_without_starting_the_jobs_behind_it(tmp_path, no_hang):
    """Every job was handed to the pool at once, and jobs already queued ran on after the failure (a failing case
    or Ctrl-C waited for them)."""
    with pytest.raises(ValueError, match="case 0 is damaged"):
        parallel_map(fail_first, [(index, str(tmp_path)) for index in range(8)], num_workers=2, description="Samples",
                     progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["started1"]  # the one job running beside it
    assert parallel_map(fail_first, [(index, str(tmp_path)) for index in range(1, 6)], num_workers=2,
                        description="Samples", progress=False) == [1, 2, 3, 4, 5]


def test_plan_and_preprocess_reports_a_dead_fingerprint_worker(roots, monkeypatch, capsys, no_hang):
    make_2d_masks(roots["raw"], n_cases=6)
    monkeypatch.setattr(fingerprint, "_measure_case", die)
    monkeypatch.setattr(sys, "argv", ["automedsam_plan_and_preprocess", "-d", "1", "-np", "2", "--plan-only"])
    with pytest.raises(SystemExit) as exit_info:
        plan_cli.main()
    error = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 2
    assert "A worker process died during 'Fingerprint'" in error and "fewer workers" in error
    assert "Traceback" not in error
    assert not (roots["preprocessed"] / "Dataset001_Discs" / "fingerprint.json").exists()


@pytest.mark.slow
def test_two_predictions_into_one_folder_write_complete_files(tmp_path):
    roots = Roots(tmp_path / "raw", tmp_path / "preprocessed", tmp_path / "results")
    write_model_folder(roots.results, shared_foundation())
    images = tmp_path / "images"
    images.mkdir()
    for index in range(IMAGES):
        Image.fromarray(toy_image(index)).save(images / f"case{index}.png")
    arguments = ["-i", str(images), "-m", str(roots.results / "Dataset001_Toy" / "default__toyPlans"),
                 "--save-probabilities", "--device", "cpu"]
    run(roots, "predict", *arguments, "-o", str(tmp_path / "alone"))
    shared = tmp_path / "shared"
    first, second = (start(roots, "predict", *arguments, "-o", str(shared), "--overwrite", log=tmp_path / f"{n}.log")
                     for n in ("first", "second"))
    for process, name in ((first, "first"), (second, "second")):
        assert process.wait(timeout=300) == 0, (tmp_path / f"{name}.log").read_text()
    assert_same_tree(tmp_path / "alone", shared)
    assert len(complete_files(shared)) == 3 * IMAGES + 2  # CASE.png, .npz, .json; fold_agreement.json and its lock
    for case in range(IMAGES):
        with np.load(shared / f"case{case}.npz", allow_pickle=False) as probabilities:
            assert sorted(probabilities.files) == ["1", "2"]
