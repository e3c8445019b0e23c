"""Roots from the environment and dataset id resolution (`1`, `001`, `Dataset001_Name`)."""
from __future__ import annotations

import os

import pytest

from automedsam.errors import AutomedsamError
from automedsam.paths import (check_outside_raw_datasets, dataset_folder_name, preprocessed_dataset_dir,
                              preprocessed_root, raw_dataset_dir, raw_root, resolve_dataset_name, results_dataset_dir,
                              results_root, roots_at)


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
