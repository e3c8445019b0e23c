"""Interrupted commands lose nothing: stopped with SIGINT (Ctrl-C) or SIGKILL in the middle and run again (`--c`
for training), each gives exactly what an uninterrupted run gives, and no half-written file is taken as complete.

Every run is a real subprocess of the installed console script on a small synthetic dataset (192 x 256 images).
"""
from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from automedsam.conversion import make_synthetic_dataset
from automedsam.planning.planner import DEFAULT_VIEWS
from pipeline_runs import Roots, assert_same_tree, complete_files, interrupt_when, partial_leftovers, run

pytestmark = pytest.mark.slow

DATASET = "Dataset900_SyntheticUS"
SHOTS, TEST_CASES = 4, 4
SAMPLES = SHOTS * (1 + len(DEFAULT_VIEWS))  # the labelled samples and their augmentation views
PLAN_ARGS = ("-d", "900", "--shots", str(SHOTS), "--folds", "2", "-np", "1", "--device", "cpu")
TRAIN_ARGS = ("900", "0", "--epochs", "4", "--device", "cpu")
SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGKILL, id="SIGKILL")]


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AUTOMEDSAM_RAW", str(raw))
        make_synthetic_dataset(900, n_train=6, n_test=TEST_CASES, seed=0)
    return raw


def fresh_roots(tmp_path: Path, raw: Path, preprocessed: Path | None = None) -> Roots:
    return Roots(raw, preprocessed or tmp_path / "preprocessed", tmp_path / "results")


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory: pytest.TempPathFactory, raw_root: Path) -> Roots:
    """The uninterrupted reference run of plan_and_preprocess."""
    roots = fresh_roots(tmp_path_factory.mktemp("reference_plan"), raw_root)
    run(roots, "plan_and_preprocess", *PLAN_ARGS)
    return roots


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, preprocessed: Roots) -> Roots:
    """The uninterrupted reference training of fold 0, on plans edited to save a resume point every epoch."""
    folder = tmp_path_factory.mktemp("reference_train")
    shutil.copytree(preprocessed.preprocessed, folder / "preprocessed")
    plans_path = folder / "preprocessed" / DATASET / "plans.json"
    plans = json.loads(plans_path.read_text())
    plans["training"]["val_every"] = 1
    plans_path.write_text(json.dumps(plans, indent=2))
    roots = fresh_roots(folder, preprocessed.raw, folder / "preprocessed")
    run(roots, "train", *TRAIN_ARGS)
    return roots


def prediction_args(raw: Path, out: Path) -> tuple[str, ...]:
    return ("-i", str(raw / DATASET / "imagesTs"), "-o", str(out), "-d", "900", "-f", "0", "--save-probabilities",
            "--device", "cpu")


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory, trained: Roots) -> Path:
    """The uninterrupted reference prediction of the held-out images."""
    out = tmp_path_factory.mktemp("reference_predict") / "out"
    run(trained, "predict", *prediction_args(trained.raw, out))
    return out


def done_files(folder: Path, pattern: str) -> list[Path]:
    return [path for path in folder.glob(pattern) if not path.name.startswith(".")]


def check_stopped(stopped, sig: signal.Signals, folder: Path) -> None:
    """A stopped run failed; after Ctrl-C it says so without a traceback and leaves no temporary file."""
    assert stopped.code != 0, stopped.output
    if sig == signal.SIGINT:
        assert "Traceback" not in stopped.output, stopped.output
        assert "Interrupted" in stopped.output, stopped.output
        assert partial_leftovers(folder) == []


@pytest.mark.parametrize("sig", SIGNALS)
def test_plan_and_preprocess_resumes_after_interruption(sig, raw_root, preprocessed, tmp_path):
    roots = fresh_roots(tmp_path, raw_root)
    folder = roots.preprocessed / DATASET
    stopped = interrupt_when(roots, lambda: bool(done_files(folder / "samples", "*.json")), sig,
                             "plan_and_preprocess", *PLAN_ARGS, log=tmp_path / "stopped.log")
    check_stopped(stopped, sig, roots.preprocessed)
    samples = len(done_files(folder / "samples", "*.json"))
    embedded = len(done_files(folder / "embeddings" / "litemedsam", "*.npy"))
    assert embedded < SAMPLES, "the run was not stopped before the end"
    for path in done_files(folder / "embeddings" / "litemedsam", "*.npy"):
        assert np.load(path, allow_pickle=False).shape == (256, 64, 64)
    again = " ".join(run(roots, "plan_and_preprocess", *PLAN_ARGS).output.split())
    assert f"{SAMPLES - samples}/{SAMPLES} samples written, {SAMPLES - embedded}/{SAMPLES} embeddings computed" in again
    assert_same_tree(preprocessed.preprocessed, roots.preprocessed)


@pytest.mark.parametrize("sig", SIGNALS)
def test_training_continued_with_c_gives_the_same_weights(sig, trained, tmp_path):
    roots = Roots(trained.raw, trained.preprocessed, tmp_path / "results")
    fold = roots.results / DATASET / "default__automedsamPlans" / "fold_0"
    stopped = interrupt_when(roots, lambda: (fold / "training_state_latest.pt").is_file(), sig, "train", *TRAIN_ARGS,
                             log=tmp_path / "stopped.log")
    check_stopped(stopped, sig, roots.results)
    assert not (fold / "checkpoint_final.json").exists(), "the run was not stopped before its last epoch"
    again = run(roots, "train", *TRAIN_ARGS, "--c")
    assert "Continuing" in again.output, again.output
    assert not (fold / "training_state_latest.pt").exists()
    assert_same_tree(trained.results, roots.results)


def test_prediction_rerun_finishes_the_rest(trained, predicted, tmp_path):
    """SIGKILL only: Ctrl-C goes through the same handler as for the two commands above."""
    sig = signal.SIGKILL
    out = tmp_path / "out"
    stopped = interrupt_when(trained, lambda: bool(done_files(out, "*.png")), sig, "predict",
                             *prediction_args(trained.raw, out), log=tmp_path / "stopped.log")
    check_stopped(stopped, sig, out)
    finished = len(done_files(out, "*.png"))
    assert 0 < finished < TEST_CASES, "the run was not stopped in the middle"
    again = run(trained, "predict", *prediction_args(trained.raw, out))
    assert f"skipped {finished} already predicted" in " ".join(again.output.split()), again.output
    assert_same_tree(predicted, out)
    assert len(complete_files(out)) == 3 * TEST_CASES  # CASE.png, .npz, .json; one fold ranks nothing: no agreement
