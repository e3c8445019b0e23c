"""Roots from the environment and dataset id resolution (`1`, `001`, `Dataset001_Name`)."""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

from automedsam.errors import AutomedsamError
from automedsam.paths import (MAX_DATASET_FOLDER_CHARS, ROOT_VARIABLES, check_outside_raw_datasets,
                              dataset_folder_name,
                              preprocessed_dataset_dir, preprocessed_root, raw_dataset_dir, raw_root,
                              resolve_dataset_name, results_dataset_dir, results_root, roots_at)
from synthetic_raw import make_2d_masks

ROOT_ACCESSORS = (raw_root, preprocessed_root, results_root)


def test_default_roots_live_under_home(tmp_path, monkeypatch):
    for variable in ("AUTOMEDSAM_RAW", "AUTOMEDSAM_PREPROCESSED", "AUTOMEDSAM_RESULTS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert raw_root() == tmp_path / "automedsam_data" / "raw"
    assert preprocessed_root() == tmp_path / "automedsam_data" / "preprocessed"
    assert results_root() == tmp_path / "automedsam_data" / "results"


def test_roots_and_dataset_dirs_follow_the_environment(roots):
    assert (raw_root(), preprocessed_root(), results_root()) == (roots["raw"], roots["preprocessed"], roots["results"])
    assert raw_dataset_dir("Dataset001_X") == roots["raw"] / "Dataset001_X"
    assert preprocessed_dataset_dir("Dataset001_X") == roots["preprocessed"] / "Dataset001_X"
    assert results_dataset_dir("Dataset001_X") == roots["results"] / "Dataset001_X"


@pytest.mark.parametrize("identifier", [1, "1", "001", " 001 ", "Dataset001_HC18"])
def test_every_spelling_resolves(roots, identifier):
    (roots["raw"] / "Dataset001_HC18").mkdir()
    (roots["raw"] / "Dataset002_ACDC").mkdir()
    assert resolve_dataset_name(identifier) == "Dataset001_HC18"


def test_dataset_found_in_results_only(roots):
    (roots["results"] / "Dataset007_Trained").mkdir()
    assert resolve_dataset_name(7) == "Dataset007_Trained"


def test_same_folder_in_several_roots_is_one_match(roots):
    for root in roots.values():
        (root / "Dataset003_X").mkdir()
    assert resolve_dataset_name("3") == "Dataset003_X"


def test_no_match_names_the_roots_searched(roots):
    (roots["raw"] / "Dataset002_Other").mkdir()
    with pytest.raises(AutomedsamError) as error:
        resolve_dataset_name(1)
    message = str(error.value)
    assert "No dataset 1 found in" in message
    assert all(str(root) in message for root in roots.values())
    assert "AUTOMEDSAM_RAW" in message


def test_two_matching_folders_are_ambiguous(roots):
    (roots["raw"] / "Dataset001_A").mkdir()
    (roots["results"] / "Dataset001_B").mkdir()
    with pytest.raises(AutomedsamError, match=r"ambiguous: Dataset001_A, Dataset001_B.*full folder name"):
        resolve_dataset_name("001")
    assert resolve_dataset_name("Dataset001_B") == "Dataset001_B"


def test_explicit_roots_limit_the_search(roots):
    (roots["results"] / "Dataset004_X").mkdir()
    with pytest.raises(AutomedsamError, match=str(roots["raw"])):
        resolve_dataset_name(4, roots=[roots["raw"]])


def test_files_and_foreign_folders_are_not_datasets(roots):
    (roots["raw"] / "Dataset005_File").write_text("")
    (roots["raw"] / "nnUNet_stuff").mkdir()
    with pytest.raises(AutomedsamError, match="No dataset"):
        resolve_dataset_name(5)


@pytest.mark.parametrize("identifier", ["HC18", "Dataset1_X", "-1", "../Dataset001_X"])
def test_malformed_identifier(roots, identifier):
    with pytest.raises(AutomedsamError, match="not a dataset id"):
        resolve_dataset_name(identifier)


def test_dataset_folder_name():
    assert dataset_folder_name(1, "HC18") == "Dataset001_HC18"
    assert dataset_folder_name(123, "my-data.v2") == "Dataset123_my-data.v2"
    with pytest.raises(AutomedsamError, match="whole number from 1 to 999"):
        dataset_folder_name(1000, "X")
    with pytest.raises(AutomedsamError, match="name 'a b' is invalid"):
        dataset_folder_name(1, "a b")
    with pytest.raises(AutomedsamError, match="invalid"):
        dataset_folder_name(1, "../x")


def test_a_dataset_folder_name_longer_than_a_shared_model_may_carry_is_refused_but_an_existing_one_still_resolves(
        roots):
    """Folders of 101 characters were made, planned and trained, and only export and install refused them."""
    assert MAX_DATASET_FOLDER_CHARS == 100
    assert len(dataset_folder_name(1, "A" * 89)) == 100
    with pytest.raises(AutomedsamError, match="101 characters long, more than the 100 a dataset folder name may have"):
        dataset_folder_name(1, "A" * 90)
    existing = "Dataset002_" + "B" * 150  # made before the limit: still read
    (roots["raw"] / existing).mkdir()
    assert resolve_dataset_name(2) == resolve_dataset_name(existing) == existing


def test_roots_at_points_the_named_roots_and_restores_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOMEDSAM_RAW", raising=False)
    monkeypatch.setenv("AUTOMEDSAM_RESULTS", str(tmp_path / "mine"))
    with roots_at({"raw": tmp_path / "bench_raw", "results": tmp_path / "bench_results"}):
        assert raw_root() == tmp_path / "bench_raw" and results_root() == tmp_path / "bench_results"
    assert "AUTOMEDSAM_RAW" not in os.environ and results_root() == tmp_path / "mine"


def test_writing_into_the_raw_datasets_is_refused_links_followed(roots, tmp_path):
    raw = roots["raw"]
    (raw / "Dataset001_X" / "labelsTs").mkdir(parents=True)
    elsewhere = tmp_path / "disk" / "Dataset002_Linked"
    elsewhere.mkdir(parents=True)
    (raw / "Dataset002_Linked").symlink_to(elsewhere)
    (tmp_path / "shortcut").symlink_to(raw / "Dataset001_X" / "labelsTs")
    refused = [raw, raw / "Dataset001_X" / "labelsTs", raw / "Dataset001_X" / "new" / "out",
               raw / "Dataset003_New", tmp_path / "shortcut", tmp_path / "shortcut" / "out", elsewhere / "labelsTr",
               raw / "dataset001_x" / "labelsTs"]  # on a case-insensitive disk, Dataset001_X's own labels
    for path in refused:
        with pytest.raises(AutomedsamError) as error:
            check_outside_raw_datasets(path, what="The output folder")
        assert f"is in the raw data (AUTOMEDSAM_RAW={raw})" in str(error.value), path


def test_writing_beside_the_raw_datasets_is_allowed(roots, tmp_path):
    (roots["raw"] / "Dataset001_X").mkdir()
    for path in (tmp_path / "predictions", roots["raw"] / "inbox" / "predictions", roots["results"] / "out",
                 tmp_path / "Dataset001_X"):
        check_outside_raw_datasets(path, what="The output folder")


def test_a_raw_root_this_user_cannot_read_guards_nothing_and_raises_no_traceback(roots, tmp_path, monkeypatch):
    """A raw root under a folder the user cannot enter (a colleague's AUTOMEDSAM_RAW) made evaluate, plot_overlays and
    predict end in a PermissionError traceback, wherever their output went."""
    def refused(first, second):
        raise PermissionError(13, "Permission denied", str(first))

    monkeypatch.setattr(os.path, "samefile", refused)
    check_outside_raw_datasets(tmp_path / "out", what="The output folder")


def point_roots(monkeypatch: pytest.MonkeyPatch, **roots: Path) -> None:
    for kind, path in roots.items():
        monkeypatch.setenv(ROOT_VARIABLES[kind], str(path))


def test_one_folder_for_all_three_roots_is_refused_naming_the_variables(tmp_path, monkeypatch):
    point_roots(monkeypatch, raw=tmp_path / "data", preprocessed=tmp_path / "data", results=tmp_path / "data")
    for accessor in ROOT_ACCESSORS:
        with pytest.raises(AutomedsamError) as refused:
            accessor()
        message = str(refused.value)
        assert f"The raw and preprocessed roots are one folder, {tmp_path / 'data'}" in message
        assert all(f"{variable}={tmp_path / 'data'}" in message for variable in ROOT_VARIABLES.values())
        assert "three separate folders, none inside another" in message and "run the command again" in message


@pytest.mark.parametrize("raw, preprocessed, results, overlap", [
    ("d/raw", "d/raw", "d/results", "The raw and preprocessed roots are one folder"),
    ("d/raw", "d/pre", "d/raw/../pre/", "The preprocessed and results roots are one folder"),
    ("d/raw", "d/pre", "d/raw/models", "The results root {d}/raw/models lies inside the raw root {d}/raw"),
    ("d/raw", "d/raw/Dataset001_X", "d/results", "The preprocessed root {d}/raw/Dataset001_X lies inside the raw"),
    ("d/everything/raw", "d/everything", "d/results", "The raw root {d}/everything/raw lies inside the preprocessed"),
], ids=["same", "same-spelled-apart", "results-in-raw", "preprocessed-in-a-raw-dataset", "raw-in-preprocessed"])
def test_roots_not_made_yet_that_overlap_are_refused(tmp_path, monkeypatch, raw, preprocessed, results, overlap):
    point_roots(monkeypatch, raw=tmp_path / raw, preprocessed=tmp_path / preprocessed, results=tmp_path / results)
    with pytest.raises(AutomedsamError, match="none inside another") as refused:
        raw_root()
    assert overlap.format(d=tmp_path / "d") in str(refused.value)
    assert not (tmp_path / "d").exists(), "the check creates no folder"


def test_a_root_linked_to_another_is_the_same_folder(tmp_path, monkeypatch):
    (tmp_path / "raw").mkdir()
    (tmp_path / "preprocessed").symlink_to(tmp_path / "raw")
    point_roots(monkeypatch, raw=tmp_path / "raw", preprocessed=tmp_path / "preprocessed", results=tmp_path / "out")
    with pytest.raises(AutomedsamError, match=f"The raw and preprocessed roots are one folder, {tmp_path / 'raw'}"):
        results_root()


def test_an_unset_root_whose_default_lies_in_a_set_one_is_refused_and_marked_as_the_default(tmp_path, monkeypatch):
    """AUTOMEDSAM_RAW=~/automedsam_data held the default preprocessed and results roots inside the raw root."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("AUTOMEDSAM_PREPROCESSED", raising=False)
    monkeypatch.delenv("AUTOMEDSAM_RESULTS", raising=False)
    point_roots(monkeypatch, raw=tmp_path / "automedsam_data")
    with pytest.raises(AutomedsamError) as refused:
        preprocessed_root()
    message = str(refused.value)
    assert f"lies inside the raw root {tmp_path / 'automedsam_data'}" in message
    assert f"AUTOMEDSAM_PREPROCESSED={tmp_path / 'automedsam_data' / 'preprocessed'} (not set: the default)" in message


def test_roots_side_by_side_are_accepted_whatever_their_names_share(tmp_path, monkeypatch):
    point_roots(monkeypatch, raw=tmp_path / "data", preprocessed=tmp_path / "data_preprocessed",
                results=tmp_path / "data_preprocessed_results")
    assert raw_root() == tmp_path / "data" and results_root() == tmp_path / "data_preprocessed_results"


def run_command(module: str, args: list[str], monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture) -> tuple[int | str | None, str]:
    """(exit code, stderr on one line) of automedsam_`module` run in this process."""
    monkeypatch.setattr(sys, "argv", [f"automedsam_{module}", *args])
    with pytest.raises(SystemExit) as ended:
        importlib.import_module(f"automedsam.cli.{module}").main()
    return ended.value.code, " ".join(capsys.readouterr().err.split())


def contents(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under `folder`, by relative path."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() if path.is_file() else None
            for path in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("module, args", [
    ("plan_and_preprocess", ["-d", "3", "--shots", "2", "--folds", "2", "--plan-only", "-np", "1"]),
    ("convert", ["synthetic", "-d", "3", "--n-train", "6", "--n-test", "0", "--overwrite"]),
], ids=["plan", "convert-overwrite"])
def test_commands_with_one_folder_for_all_roots_change_nothing(tmp_path, monkeypatch, capsys, module, args):
    """The reviewer's runs: planning wrote fingerprint.json, plans.json and splits.json into the raw dataset, and a
    conversion with --overwrite then deleted the samples, embeddings and trained folds kept in the same folder."""
    folder = tmp_path / "data"
    dataset = make_2d_masks(folder, n_cases=6, folder="Dataset003_SyntheticUS")
    for kept in ("samples/case00.npz", "embeddings/case00.npy", "default__automedsamPlans/fold_0/checkpoint_final.pth"):
        (dataset / kept).parent.mkdir(parents=True)
        (dataset / kept).write_bytes(b"made by an earlier run")
    point_roots(monkeypatch, raw=folder, preprocessed=folder, results=folder)
    before = contents(folder)
    code, error = run_command(module, args, monkeypatch, capsys)
    assert code != 0 and "Traceback" not in error
    assert "The raw and preprocessed roots are one folder" in error and "AUTOMEDSAM_RESULTS=" in error
    assert contents(folder) == before
