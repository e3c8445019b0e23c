"""A model folder's life between training and prediction: what counts as trained with other plans, finished,
interrupted or damaged, and what each command then tells its user to do. Both commands must give the same answer:
a command one of them gives that the other refuses leaves the user in a circle.

The fold data are the random-embedding blobs of test_training, trained on its one-layer decoder (seconds).
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from rich.console import Console

from automedsam.boxes import MASK_BOXES
from automedsam.cli.train import main
from automedsam.errors import AutomedsamError
from automedsam.foundation.cache import PREPROCESSING_STATE_FILE
from automedsam.inference.model_folder import open_model_folder
from automedsam.model_sharing.export import export_model
from automedsam.model_sharing.install import install_model
from automedsam.plans import Plans
from automedsam.training import train_fold
from automedsam.training import trainer as trainer_module
from test_training import (DATASET, ELLIPSE, RING, CheapFoundation, fold_dir, held_by_another_process,
                           interrupt_at_epoch, make_plans, quiet, write_preprocessed)

MODEL = "default__automedsamPlans"


@pytest.fixture(scope="module")
def cheap() -> CheapFoundation:
    return CheapFoundation()


@pytest.fixture
def blobs(roots: dict[str, Path]) -> Path:
    """Two targets, six samples (four trained per fold), a validation every 2 epochs: a stop at epoch 3 leaves the
    training state of epoch 2, a stop at epoch 1 none."""
    return write_preprocessed(roots["preprocessed"], make_plans([ELLIPSE, RING]), n_samples=6, n_train=4)


def interrupted(monkeypatch: pytest.MonkeyPatch, cheap: CheapFoundation, fold: int, *, epoch: int) -> None:
    """`fold` trained for 4 epochs and stopped as `epoch` begins."""
    real_epoch = trainer_module.train_epoch
    interrupt_at_epoch(monkeypatch, epoch)
    with pytest.raises(KeyboardInterrupt):
        train_fold(DATASET, fold, epochs=4, foundation=cheap, console=quiet())
    monkeypatch.setattr(trainer_module, "train_epoch", real_epoch)


def replan(roots: dict[str, Path]) -> dict:
    """The plans changed (one more epoch), as a replan after a review changes them; the new plans."""
    plans_path = roots["preprocessed"] / DATASET / "plans.json"
    plans = json.loads(plans_path.read_text())
    plans["training"]["epochs"] += 1
    plans_path.write_text(json.dumps(plans))
    return plans


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """automedsam_train's main() in this process: (exit code, stderr on one line)."""
    monkeypatch.setattr(sys, "argv", ["automedsam_train", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, " ".join(capsys.readouterr().err.split())


# --- a folder with no trained fold holds no plans a fold was trained with ------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_model_folder_whose_runs_saved_nothing_takes_the_new_plans(roots, blobs, cheap, monkeypatch, overwrite):
    """A run stopped before its first saved epoch leaves the copied JSON files and a log: after a replan training
    refused the folder as "folds trained with other plans", and --overwrite moved it to previous/ as a model that
    automedsam_predict -m still uses."""
    interrupted(monkeypatch, cheap, 0, epoch=2)
    assert (fold_dir(roots) / "log.json").is_file(), "epoch 1 was logged, nothing saved"
    new_plans = replan(roots)
    train_fold(DATASET, 1, epochs=1, overwrite=overwrite, foundation=cheap, console=quiet())
    assert json.loads((fold_dir(roots).parent / "plans.json").read_text()) == new_plans
    assert not (roots["results"] / DATASET / "previous").exists()


def test_the_plans_of_a_fold_training_before_its_first_saved_epoch_are_not_replaced(roots, blobs, cheap,
                                                                                    monkeypatch):
    """Fold 3 trains the old plans in another process and has saved nothing yet: replacing the copies under it would
    leave a fold of the old plans in a folder that describes the new ones."""
    interrupted(monkeypatch, cheap, 0, epoch=2)
    model = fold_dir(roots).parent
    old_plans = json.loads((model / "plans.json").read_text())
    replan(roots)
    with held_by_another_process(model, "fold_3"):
        with pytest.raises(AutomedsamError, match="fold_3 .* is being trained by another process"):
            train_fold(DATASET, 1, epochs=1, foundation=cheap, console=quiet())
    assert json.loads((model / "plans.json").read_text()) == old_plans


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_trainer_refused_before_training_is_refused_for_its_own_reason_after_a_replan(roots, cheap, overwrite):
    """fullsup refused the boxes-only dataset after copying the plans: after a replan it was refused as trained with
    other plans, and --overwrite moved the three JSON files to previous/ as a model."""
    write_preprocessed(roots["preprocessed"], make_plans([ELLIPSE]), n_samples=6, n_train=4, with_masks=False)
    with pytest.raises(AutomedsamError, match="fullsup.*without"):
        train_fold(DATASET, 0, trainer="fullsup", foundation=cheap, console=quiet())
    new_plans = replan(roots)
    with pytest.raises(AutomedsamError, match="fullsup.*without"):
        train_fold(DATASET, 0, trainer="fullsup", overwrite=overwrite, foundation=cheap, console=quiet())
    assert json.loads((fold_dir(roots, trainer="fullsup").parent / "plans.json").read_text()) == new_plans
    assert not (roots["results"] / DATASET / "previous").exists()


def test_an_interrupted_fold_that_saved_a_state_is_trained_with_the_plans_it_had(roots, blobs, cheap, monkeypatch):
    """The boundary of the rule above: a training state is a fold trained with the old plans."""
    interrupted(monkeypatch, cheap, 0, epoch=3)
    replan(roots)
    with pytest.raises(AutomedsamError, match=r"holds folds trained with other plans.*Pass --overwrite"):
        train_fold(DATASET, 1, epochs=1, foundation=cheap, console=quiet())


CHECKED = {"candidate": "bf16", "samples": 4, "labelled": 4, "pairs": 8, "mean_abs_dice_change": 0.001,
           "worst_dice_change": -0.004, "passed": True, "device": "cpu", "hardware": "CPU with avx512_bf16",
           "key": "of the sources before", "reason": "the rule"}


@pytest.mark.parametrize("precision, check, differ", [
    ("bf16", {"key": "of the sources after a touch"}, None),  # a labelled raw image touched, measured again
    ("bf16", {"key": "of other sources", "mean_abs_dice_change": 0.0015, "worst_dice_change": -0.002,
              "hardware": "CPU with amx_bf16"}, None),
    ("fp32", {"passed": False, "key": "of corrected boxes", "mean_abs_dice_change": 0.01},
     "foundation_model.precision, foundation_model.precision_check"),
    ("bf16", {"device": "cuda"}, "foundation_model.precision_check"),  # bf16 planned for another kind of device
])
def test_only_the_precision_and_the_outcome_of_its_check_make_other_plans(roots, cheap, precision, check, differ):
    """Replanning after `touch` on a labelled raw image (or a copy without -p, a git checkout) measured the precision
    again under another key: the plans differed in precision_check.key alone, and every fold had to be retrained."""
    plans = make_plans([ELLIPSE, RING])
    plans["foundation_model"].update(precision="bf16", precision_check=CHECKED)
    folder = write_preprocessed(roots["preprocessed"], plans, n_samples=6, n_train=4)
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    plans["foundation_model"].update(precision=precision, precision_check={**CHECKED, **check})
    (folder / "plans.json").write_text(json.dumps(plans))
    if differ is None:
        train_fold(DATASET, 1, epochs=1, foundation=cheap, console=quiet())
        assert (fold_dir(roots, fold="fold_1") / "checkpoint_final.pt").is_file()
        return
    with pytest.raises(AutomedsamError, match=rf"other plans .* \(they differ in {differ}:.*Pass --overwrite"):
        train_fold(DATASET, 1, epochs=1, foundation=cheap, console=quiet())


@pytest.mark.parametrize("mask_boxes", [None, MASK_BOXES - 1])
def test_samples_boxed_by_an_earlier_rule_are_refused_as_an_earlier_versions(roots, blobs, cheap, mask_boxes):
    """Samples an earlier automedsam wrote (its state file without mask_boxes, or an earlier rule's) were refused as
    made under other plans, "planned again with --plan-only, or edited": blaming the user for an upgrade."""
    labelled = json.loads((blobs / "splits.json").read_text())["labelled"]
    state = {"samples_key": Plans.load(blobs / "plans.json").samples_key(labelled), "mask_boxes": MASK_BOXES}
    (blobs / PREPROCESSING_STATE_FILE).write_text(json.dumps(state))
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())  # written by this version
    earlier = {"samples_key": state["samples_key"]} if mask_boxes is None else {**state, "mask_boxes": mask_boxes}
    (blobs / PREPROCESSING_STATE_FILE).write_text(json.dumps(earlier))
    with pytest.raises(AutomedsamError) as refused:
        train_fold(DATASET, 1, epochs=1, foundation=cheap, console=quiet())
    message = " ".join(str(refused.value).split())
    assert "written by an earlier automedsam" in message and "boxed by an earlier rule" in message, message
    assert f"automedsam_plan_and_preprocess -d {DATASET} --preprocess-only to rewrite them" in message, message
    assert "planned again" not in message and "other plans" not in message, message


def test_ctrl_c_advises_c_only_where_a_training_state_was_saved(roots, blobs, tiny_foundation, monkeypatch, capsys):
    """Stopped before its first saved epoch, the note said "Run the same command with --c", which answered "Nothing
    to resume"."""
    args = ("901", "0", "--epochs", "4", "--device", "cpu")
    real_epoch = trainer_module.train_epoch
    interrupt_at_epoch(monkeypatch, 2)
    code, stderr = run_main(monkeypatch, capsys, *args)
    assert code == 130 and "nothing to continue" in stderr and "with --c" not in stderr, stderr
    monkeypatch.setattr(trainer_module, "train_epoch", real_epoch)
    interrupt_at_epoch(monkeypatch, 3)  # the state of epoch 2 saved
    code, stderr = run_main(monkeypatch, capsys, *args)
    assert code == 130 and "Run the same command with --c to continue" in stderr, stderr


# --- finished, as prediction decides it -----------------------------------------------------------------------------


def test_a_finished_fold_without_its_final_weights_is_damaged_for_training_and_prediction_alike(roots, blobs, cheap):
    """checkpoint_final.pt deleted, its .json left: predict said to train the fold, train said it was finished, --c
    that there was nothing to continue, and exited 0."""
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    folder = fold_dir(roots)
    (folder / "checkpoint_final.pt").unlink()
    for resume in (False, True):
        with pytest.raises(AutomedsamError, match=r"is damaged: it has checkpoint_final.json but not its "
                                                  r"checkpoint_final.pt.*Pass --overwrite"):
            train_fold(DATASET, 0, epochs=1, resume=resume, foundation=cheap, console=quiet())
    with pytest.raises(AutomedsamError, match=r"has checkpoint_final.json but not its checkpoint_final.pt.*"
                                              r"`automedsam_train 901 fold0 --overwrite`"):
        open_model_folder(folder.parent, folds=[0])
    train_fold(DATASET, 0, epochs=1, overwrite=True, foundation=cheap, console=quiet())
    assert open_model_folder(folder.parent, folds=[0]).folds == (0,)


def test_an_unreadable_checkpoint_names_the_command_that_retrains_its_fold(roots, blobs, cheap):
    """"Delete it and retrain" left the .json beside nothing, which training then took for a finished fold."""
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    (fold_dir(roots) / "checkpoint_final.pt").write_bytes(b"truncated")
    folder = open_model_folder(fold_dir(roots).parent, folds=[0])
    with pytest.raises(AutomedsamError, match=r"cannot be read.*`automedsam_train 901 fold0 --overwrite` replaces"):
        folder.load_state(0)


def test_c_on_an_installed_fold_says_it_is_finished(roots, cheap, monkeypatch, tmp_path):
    """An installed fold holds checkpoint_final.pt without its .json and no training state, and its plans name the
    foundation weights by sha256: --c said "Nothing to resume ... run without --c", which said it was finished."""
    plans = {**make_plans([ELLIPSE, RING]), "normalization": {"scheme": "percentile_window", "lower": 0.0,
                                                              "upper": 1.0, "reason": "test"}}  # one install reads
    write_preprocessed(roots["preprocessed"], plans, n_samples=6, n_train=4)
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    archive = tmp_path / "model.zip"
    export_model(fold_dir(roots).parent, archive, folds=[0])
    monkeypatch.setenv("AUTOMEDSAM_RESULTS", str(tmp_path / "installed"))
    install_model(archive)
    installed = tmp_path / "installed" / DATASET / MODEL / "fold_0"
    assert not (installed / "checkpoint_final.json").exists() and "sha256" in json.loads(
        (installed.parent / "plans.json").read_text())["foundation_model"]
    output = io.StringIO()
    result = train_fold(DATASET, 0, epochs=1, resume=True, foundation=cheap,
                        console=Console(file=output, width=60))
    assert result.already_finished and result.fold_dir == installed
    assert f"{installed} is already finished; nothing to continue" in output.getvalue(), "one line, not wrapped"
    with pytest.raises(AutomedsamError, match="is already finished. Pass --c"):
        train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    train_fold(DATASET, 1, epochs=1, foundation=cheap, console=quiet())  # a fold of its own beside the installed one
    pinned = json.loads((installed.parent / "plans.json").read_text())["foundation_model"]
    assert "sha256" in pinned, "the installed folds' weights stay checked by hash, not by the local plans' path"


# --- interrupted runs -----------------------------------------------------------------------------------------------


def test_c_with_other_options_names_the_option_that_differs(roots, blobs, cheap, monkeypatch):
    """The message held the whole configuration (some 900 characters) and left the user to find the difference."""
    interrupted(monkeypatch, cheap, 0, epoch=3)
    with pytest.raises(AutomedsamError) as refused:
        train_fold(DATASET, 0, epochs=6, resume=True, foundation=cheap, console=quiet())
    message = str(refused.value)
    assert "epochs: interrupted run 4, this command 6 (pass --epochs 4)" in message
    assert "lr_step_epoch: interrupted run 2, this command 3 (follows --epochs)" in message
    assert "losses" not in message and len(message) < 500, message


def test_prediction_of_an_interrupted_fold_gives_the_command_that_continues_it(roots, blobs, cheap, monkeypatch,
                                                                               capsys):
    """-f 1 on a fold stopped at epoch 3 said "Train it with automedsam_train 901 fold1", which training refuses
    ("holds an interrupted run. Pass --c"); -f 0 1 --checkpoint best ensembled its best checkpoint so far in
    silence. The command given is the one --c takes: the run's own --epochs."""
    interrupted(monkeypatch, cheap, 1, epoch=3)
    model = fold_dir(roots).parent
    command = "`automedsam_train 901 fold1 --epochs 4 --c`"
    with pytest.raises(AutomedsamError, match=rf"Fold\(s\) 1 were interrupted.*{command}"):
        open_model_folder(model)
    with pytest.raises(AutomedsamError, match=rf"Fold 1 .* has not finished training.*{command}"):
        open_model_folder(model, folds=[1])
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    capsys.readouterr()
    folder = open_model_folder(model, folds=[0, 1], checkpoint="best")
    assert folder.folds == (0, 1) and folder.unfinished == (1,)
    warning = " ".join(capsys.readouterr().err.split())
    assert "Warning: fold(s) 1 of" in warning and "have not finished training" in warning and command in warning
    train_fold(DATASET, 1, epochs=4, resume=True, foundation=cheap, console=quiet())  # the command given
    assert open_model_folder(model, folds=[0, 1], checkpoint="best").unfinished == ()
    assert capsys.readouterr().err == "", "finished folds are used without a word"
