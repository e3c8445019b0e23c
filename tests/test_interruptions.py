"""A Ctrl-C (or a kill turned into one) at the worst moment of a step leaves nothing the next run takes for done:
a sample dropped halfway, a dataset swapped halfway, a replan while a fold trains."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_raw import make_2d_masks
from test_preprocessing import FakeFoundation, run, touched
from test_training import (DATASET, ELLIPSE, CheapFoundation, fold_dir, interrupt_at_epoch, make_plans, quiet,
                           run_main, write_preprocessed)

from automedsam import plans as plans_module
from automedsam.boxes import mask_to_boxes
from automedsam.cli import convert as convert_cli
from automedsam.conversion import make_synthetic_dataset
from automedsam.conversion import staging as staging_module
from automedsam.io import read_segmentation, write_segmentation
from automedsam.planning.augmentation import transform_box, zoom_window
from automedsam.planning.planner import DEFAULT_VIEWS
from automedsam.samples import stored_image
from automedsam.training import train_fold
from automedsam.training import trainer as trainer_module


# --- preprocessing: a sample whose mask changed ---------------------------------------------------------------

def test_a_drop_stopped_before_the_views_are_deleted_redoes_the_views_with_the_corrected_mask(roots, monkeypatch):
    """The sample's own files went first: stopped before its views', the rerun wrote the sample with the new boxes
    and took the views, never checked on their own, for complete, so training kept the old mask in every view."""
    monkeypatch.setattr(plans_module, "build_foundation_model", FakeFoundation().build)
    root = make_2d_masks(roots["raw"], n_cases=6)
    out = run("1", shots=3).out_dir
    corrected = json.loads((out / "splits.json").read_text())["labelled"][0]
    mask_file = root / "labelsTr" / f"{corrected}.nii.gz"
    mask, geometry = read_segmentation(mask_file)
    moved = np.roll(mask, 3, axis=1)
    write_segmentation(mask_file, moved, geometry)
    touched(mask_file)
    real_unlink = Path.unlink

    def stopped_at_the_first_view_file(path: Path, missing_ok: bool = False) -> None:
        if path.name.startswith(f"{corrected}__"):
            raise KeyboardInterrupt
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", stopped_at_the_first_view_file)
    with pytest.raises(KeyboardInterrupt):
        run("1", shots=3)
    monkeypatch.setattr(Path, "unlink", real_unlink)
    again = run("1", shots=3)
    expected = [{"label": 1, "box": list(box)} for box in mask_to_boxes(moved == 1)]
    assert json.loads((out / "samples" / f"{corrected}.json").read_text())["boxes"] == expected
    for view in DEFAULT_VIEWS:
        meta = json.loads((out / "samples" / f"{corrected}__{view['name']}.json").read_text())
        window = zoom_window([40, 48], [entry["box"] for entry in expected], view)
        assert meta["boxes"] == [{"label": 1, "box": transform_box(entry["box"], [40, 48], view, window)}
                                 for entry in expected], view["name"]
    assert again.preprocessing["samples_written"] == 1 + len(DEFAULT_VIEWS)


# --- conversion: an existing dataset replaced with --overwrite ------------------------------------------------

def dataset_files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_swap_stopped_between_its_renames_keeps_the_old_dataset(roots, monkeypatch):
    """Only OSError put the old dataset back: a Ctrl-C after it was set aside left it hidden and deleted the new one."""
    target = make_synthetic_dataset(901, n_train=3, n_test=1)
    before = dataset_files(target)
    real_rename = Path.rename

    def stopped_before_the_new_one_is_in_place(path: Path, destination: Path) -> Path:
        if path.name.endswith(".partial") and Path(destination) == target:
            raise KeyboardInterrupt
        return real_rename(path, destination)

    monkeypatch.setattr(Path, "rename", stopped_before_the_new_one_is_in_place)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_dataset(901, n_train=4, n_test=1, seed=1, overwrite=True)
    assert dataset_files(target) == before
    assert sorted(path.name for path in roots["raw"].iterdir()) == [target.name], "nothing hidden is left"


def convert_synthetic(monkeypatch: pytest.MonkeyPatch, *options: str) -> int:
    """The exit code of `automedsam_convert synthetic -d 902 OPTIONS`."""
    monkeypatch.setattr(sys, "argv", ["automedsam_convert", "synthetic", "-d", "902", "--n-test", "1", *options])
    with pytest.raises(SystemExit) as exit_info:
        convert_cli.main()
    return exit_info.value.code


def test_a_deletion_of_the_old_copy_stopped_midway_says_so_and_the_next_conversion_finishes_it(
        roots, monkeypatch, capsys):
    """A Ctrl-C while the replaced dataset was deleted left a half-deleted hidden folder nothing removed, and the note
    said that nothing was written although the new dataset was in place."""
    assert convert_synthetic(monkeypatch, "--n-train", "3") == 0
    real_rmtree = shutil.rmtree

    def stopped_midway(path: Path, *args, **kwargs) -> None:
        if str(path).endswith(".replaced"):
            (Path(path) / "dataset.json").unlink()  # some of it is gone already
            raise KeyboardInterrupt
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(staging_module.shutil, "rmtree", stopped_midway)
    capsys.readouterr()
    assert convert_synthetic(monkeypatch, "--n-train", "4", "--overwrite") == 0
    said = capsys.readouterr().err
    target = roots["raw"] / "Dataset902_SyntheticUS"
    left = [path for path in roots["raw"].iterdir() if path != target]
    assert len(left) == 1 and left[0].name.startswith(f".{target.name}.") and left[0].name.endswith(".replaced")
    assert "Nothing was written" not in said
    assert "the new dataset is in place" in said and str(left[0]) in said, said
    assert len(list((target / "imagesTr").iterdir())) == 4
    monkeypatch.setattr(staging_module.shutil, "rmtree", real_rmtree)
    assert convert_synthetic(monkeypatch, "--n-train", "5", "--overwrite") == 0
    assert sorted(path.name for path in roots["raw"].iterdir()) == [target.name]
    assert len(list((target / "imagesTr").iterdir())) == 5


# --- training: the plans replaced while a fold trains ---------------------------------------------------------

class EncodingCheapFoundation(CheapFoundation):
    """CheapFoundation that also encodes images (their mean intensity broadcast), which the second look needs."""

    pixel_scaling = "minmax"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(1, 2, 3))[:, None, None, None].expand(-1, 256, 64, 64).clone()


def test_a_replan_while_a_fold_trains_leaves_its_second_look_check_on_the_images_it_trained_with(roots, monkeypatch):
    """The check read the validation images from samples/ once training was over: a replan meanwhile (which
    deletes or rewrites samples/) ended the fold with a FileNotFoundError, or measured images of other plans."""
    plans = {**make_plans([ELLIPSE]), "second_look": {"object_size": {"1": 0.1}, "reason": "test"}}
    folder = write_preprocessed(roots["preprocessed"], plans, n_samples=6, n_train=4)
    trained_with = [stored_image(folder, sid) for sid in ("blob004", "blob005")]
    real_epoch, real_check = trainer_module.train_epoch, trainer_module.second_look_check
    checked: list[list[np.ndarray]] = []

    def replanned_meanwhile(*args, **kwargs):
        shutil.rmtree(folder / "samples", ignore_errors=True)
        return real_epoch(*args, **kwargs)

    def recorded(modules, foundation, samples, images, object_sizes):
        checked.append(list(images))
        return real_check(modules, foundation, samples, images, object_sizes)

    monkeypatch.setattr(trainer_module, "train_epoch", replanned_meanwhile)
    monkeypatch.setattr(trainer_module, "second_look_check", recorded)
    result = train_fold(DATASET, "fold0", foundation=EncodingCheapFoundation(), console=quiet())
    assert result.summary["finished"] and not (folder / "samples").exists()
    looks = json.loads((fold_dir(roots) / "validation" / "summary.json").read_text())["second_look"]
    assert set(looks) == {"1"} and looks["1"]["reference"] == "frozen model prompted with the true boxes"
    assert len(checked) == 1 and len(checked[0]) == len(trained_with)
    assert all(np.array_equal(seen, stored) for seen, stored in zip(checked[0], trained_with))


# --- training: a fold replaced with --overwrite ---------------------------------------------------------------

TRAIN_ARGS = ("901", "0", "--epochs", "4", "--device", "cpu")


def trained_fold(roots, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Fold 0 of the blobs, finished after one epoch by the train command."""
    write_preprocessed(roots["preprocessed"], make_plans([ELLIPSE]), n_samples=6, n_train=4)
    assert run_main(monkeypatch, capsys, "901", "0", "--epochs", "1", "--device", "cpu")[0] == 0


def stop_here(*args, **kwargs) -> None:
    raise KeyboardInterrupt


def test_ctrl_c_before_overwrite_deletes_the_fold_says_the_fold_is_intact(roots, tiny_foundation, monkeypatch, capsys):
    """Stopped while the new run was loaded and built, the note said to continue with --c: the old fold, finished and
    untouched, answered "nothing to continue", and no new run had started."""
    trained_fold(roots, monkeypatch, capsys)
    weights = (fold_dir(roots) / "checkpoint_final.pt").read_bytes()
    monkeypatch.setattr(trainer_module, "_build_model", stop_here)
    code, stderr = run_main(monkeypatch, capsys, *TRAIN_ARGS, "--overwrite")
    assert code == 130 and "Traceback" not in stderr, stderr
    assert f"{fold_dir(roots)} is intact" in stderr and "again (with --overwrite)" in stderr, stderr
    assert "--c" not in stderr, stderr
    assert (fold_dir(roots) / "checkpoint_final.pt").read_bytes() == weights


def test_ctrl_c_once_overwrite_deleted_the_fold_advises_what_the_new_run_allows(roots, tiny_foundation, monkeypatch,
                                                                              capsys):
    """The boundary of the rule above: once the old fold is deleted, the new run's own state decides, and --c, which
    --overwrite contradicts, takes its place."""
    trained_fold(roots, monkeypatch, capsys)
    real_epoch = trainer_module.train_epoch
    interrupt_at_epoch(monkeypatch, 1)
    code, stderr = run_main(monkeypatch, capsys, *TRAIN_ARGS, "--overwrite")
    assert code == 130 and "nothing to continue" in stderr and "is intact" not in stderr, stderr
    monkeypatch.setattr(trainer_module, "train_epoch", real_epoch)
    interrupt_at_epoch(monkeypatch, 3)  # the state of epoch 2 saved
    code, stderr = run_main(monkeypatch, capsys, *TRAIN_ARGS, "--overwrite")
    assert code == 130 and "is intact" not in stderr, stderr
    assert "Run the same command with --c in place of --overwrite to continue the new run" in stderr, stderr
