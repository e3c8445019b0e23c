"""The folds' agreement per predicted case: the score, its record beside the label maps, the summary's names."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from automedsam.errors import AutomedsamError
from automedsam.inference import agreement as agreement_module
from automedsam.inference.agreement import AGREEMENT_FILE, AgreementRecord, FoldAgreement, least_agreed
from automedsam.inference.review import disagreement
from automedsam.inference.predictor import Predictor
from automedsam.inference.run import PredictionSummary
from tests.test_box_refinement import (IntensityFoundation, IntensityPrompt, PaddingFilling, landscape_nodule,
                                      one_target_plans)


WHOLE = (slice(None), slice(None))  # the masks below are the image's own pixels: no padding


def folds(*masks: list[list[int]], labels: int = 1) -> torch.Tensor:
    """(labels, folds, 1 slice, 1, H, W) probabilities from each fold's 0/1 mask (the same for every label)."""
    stacked = torch.tensor(masks, dtype=torch.float32)[:, None, None]  # (folds, 1, 1, H, W)
    return (stacked * 0.9 + 0.05)[None].repeat(labels, 1, 1, 1, 1, 1)


def test_identical_masks_agree_fully_and_disjoint_ones_not_at_all() -> None:
    same = FoldAgreement()
    same.add(folds([[1, 1], [0, 0]], [[1, 1], [0, 0]], [[1, 1], [0, 0]]), region=WHOLE)
    assert same.score() == pytest.approx(1.0)
    apart = FoldAgreement()
    apart.add(folds([[1, 0], [0, 0]], [[0, 0], [0, 1]]), region=WHOLE)
    assert apart.score() == pytest.approx(0.0)
    half = FoldAgreement()
    half.add(folds([[1, 1], [0, 0]], [[1, 0], [0, 0]]), region=WHOLE)
    assert half.score() == pytest.approx(2 * 1 / 3)


def test_empty_masks_agree_a_single_fold_has_no_score_and_slices_are_summed() -> None:
    empty = FoldAgreement()
    empty.add(folds([[0, 0]], [[0, 0]]), region=WHOLE)
    assert empty.score() == pytest.approx(1.0)  # nothing found anywhere: all alike
    single = FoldAgreement()
    single.add(folds([[1, 0]]), region=WHOLE)
    assert single.score() is None and FoldAgreement().score() is None
    volume = FoldAgreement()
    volume.add(folds([[1, 1, 1, 1]], [[1, 1, 1, 1]]), region=WHOLE)  # a slice where both folds hold 4 pixels alike
    volume.add(folds([[1, 0, 0, 0]], [[0, 0, 0, 0]]), region=WHOLE)  # a slice where one fold holds a speck alone
    assert volume.score() == pytest.approx(2 * 4 / 9)  # the volume's Dice, not the mean of 1.0 and 0.0


def test_a_target_no_fold_found_does_not_hide_the_disagreement_on_another() -> None:
    two_labels = torch.cat([folds([[1, 0]], [[0, 1]]), folds([[0, 0]], [[0, 0]])])
    scored = FoldAgreement()
    scored.add(two_labels, region=WHOLE)
    assert scored.score() == pytest.approx(0.0)  # not 0.5: the absent label says nothing about the nodule
    found_by_one = FoldAgreement()
    found_by_one.add(folds([[1, 0]], [[0, 0]], [[0, 0]]), region=WHOLE)
    assert found_by_one.score() == pytest.approx(1 / 3)  # the two empty folds agree with each other


def test_the_padding_below_a_landscape_image_is_no_disagreement() -> None:
    """One fold's decoder filling the padding rows of the low-res frame counted as a disagreement the label map never
    shows: two folds alike on the image's nodule scored 0.06 instead of 0.98."""
    modules = [{1: IntensityPrompt(6.0, 0.5)}, {1: IntensityPrompt(6.0, 0.51)}]
    scores = []
    for foundation in (IntensityFoundation(), PaddingFilling(filled=0.51)):
        agreement = FoldAgreement()
        predictor = Predictor(foundation, one_target_plans(), modules)
        predictor.slice_probabilities(predictor.load_array(landscape_nodule(), is_volume=False), agreement=agreement)
        scores.append(agreement.score())
    assert scores[0] > 0.9
    assert scores[1] == pytest.approx(scores[0])
    cropped = FoldAgreement()
    cropped.add(folds([[1, 1], [0, 1]], [[1, 1], [0, 0]]), region=(slice(0, 1), slice(None)))
    assert cropped.score() == pytest.approx(1.0), "the rows below the region are left out"


def two_folds(labels: list[int], *, shared: int) -> list[np.ndarray]:
    """Two folds' label maps holding each label as a 10-pixel run in a row of its own, `shared` pixels of it alike
    (pairwise Dice shared / 10)."""
    first, second = np.zeros((8, 30), np.uint8), np.zeros((8, 30), np.uint8)
    for label in labels:
        first[2 * label, :10] = label
        second[2 * label, 10 - shared:20 - shared] = label
    return [first, second]


def test_the_review_ranks_by_the_labels_some_fold_found_as_the_agreement_does() -> None:
    """Labels no fold predicted counted as full agreement: one barely agreed label of three showed after three labels
    agreed on at 0.7."""
    labels = [1, 2, 3]
    probabilities = {label: np.zeros((8, 30), np.float32) for label in labels}
    one_label = disagreement(two_folds([1], shared=2), probabilities, labels)
    all_labels = disagreement(two_folds(labels, shared=7), probabilities, labels)
    assert one_label == pytest.approx(0.8) and all_labels == pytest.approx(0.3)  # was 0.267 and 0.3: B shown first
    assert disagreement(two_folds([], shared=0), probabilities, labels) == 0.0  # no fold found anything: all alike


def test_slices_the_user_corrected_can_be_left_out_of_a_volumes_score() -> None:
    volume = FoldAgreement()
    both = torch.cat([folds([[1, 1]], [[1, 1]]), folds([[1, 0]], [[0, 1]])], dim=2)
    volume.add(both, region=WHOLE)  # slices 0 and 1 at once
    volume.add(folds([[1, 1]], [[1, 0]]), region=WHOLE)  # slice 2
    assert volume.score() == pytest.approx(2 * 3 / 9)
    assert volume.score(leave_out={1}) == pytest.approx(2 * 3 / 7)  # the disagreeing slice boxed by the user
    assert volume.score(leave_out={1, 2}) == pytest.approx(1.0)
    assert volume.score(leave_out={0, 1, 2}) is None  # nothing of the model's left to check


def written(folder: Path, *cases: str) -> None:
    for case in cases:
        (folder / f"{case}.png").write_bytes(b"")


def test_the_record_keeps_the_cases_whose_label_map_is_in_the_folder(tmp_path: Path) -> None:
    record = AgreementRecord(tmp_path, warn=pytest.fail)
    written(tmp_path, "a", "b")
    record.add("a", 0.9)
    record.add("b", 0.4)
    record.add("gone", 0.1)  # its label map is not there (a failed write): not recorded
    assert json.loads((tmp_path / AGREEMENT_FILE).read_text()) == {"b": 0.4, "a": 0.9}
    (tmp_path / "b.png").unlink()
    written(tmp_path, "c")
    AgreementRecord(tmp_path, warn=pytest.fail).add("c", 0.2)  # another run into the same folder keeps "a"
    assert least_agreed(tmp_path) == [("c", 0.2), ("a", 0.9)]
    AgreementRecord(tmp_path, warn=pytest.fail).add("a", None)  # redone with one fold: its old score goes
    assert least_agreed(tmp_path) == [("c", 0.2)]
    (tmp_path / AGREEMENT_FILE).write_text("{ edited by hand")
    assert least_agreed(tmp_path) == []
    (tmp_path / "c.png").unlink()
    assert least_agreed(tmp_path) == []


def test_nothing_to_rank_writes_no_file_and_an_end_with_nothing_new_drops_what_left(tmp_path: Path) -> None:
    written(tmp_path, "a", "b")
    single_fold = AgreementRecord(tmp_path, warn=pytest.fail)
    single_fold.add("a", None)
    single_fold.flush()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.png", "b.png"]  # no empty file, no lock
    AgreementRecord(tmp_path, warn=pytest.fail).add("b", 0.3)
    (tmp_path / "b.png").unlink()
    AgreementRecord(tmp_path, warn=pytest.fail).flush()  # a run with nothing to redo
    assert json.loads((tmp_path / AGREEMENT_FILE).read_text()) == {}


def test_a_long_run_writes_the_record_at_intervals_and_at_the_end(tmp_path: Path) -> None:
    record = AgreementRecord(tmp_path, warn=pytest.fail, every_s=3600)
    written(tmp_path, "a", "b")
    record.add("a", 0.9)
    record.add("b", 0.4)
    assert not (tmp_path / AGREEMENT_FILE).exists()  # not rewritten per image
    record.flush()
    assert least_agreed(tmp_path) == [("b", 0.4), ("a", 0.9)]


def test_a_folder_that_cannot_hold_the_record_gets_one_warning_and_the_run_goes_on(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    def no_locks(path):
        raise AutomedsamError(f"Cannot write {path}: No locks available.")
    monkeypatch.setattr(agreement_module, "holding_lock", no_locks)
    warnings: list[str] = []
    record = AgreementRecord(tmp_path, warn=warnings.append)
    written(tmp_path, "a", "b")
    record.add("a", 0.5)
    record.add("b", 0.6)
    assert len(warnings) == 1 and "not recorded" in warnings[0] and "No locks available" in warnings[0]
    assert not (tmp_path / AGREEMENT_FILE).exists()


def test_the_summary_names_the_cases_to_check_first(tmp_path: Path) -> None:
    summary = PredictionSummary(3, 0, 0, tmp_path, "the model", least_agreed=(("c", 0.2), ("b", 0.71)))
    assert summary.line().endswith(f"The folds agree least on c (0.20), b (0.71): check those first ({AGREEMENT_FILE} "
                                   "ranks every case by the folds' agreement, 1 = all alike).")
    assert "agree" not in PredictionSummary(3, 0, 0, tmp_path, "the model").line()


def test_the_summary_names_no_case_to_check_first_where_the_folds_all_agree(tmp_path: Path) -> None:
    """Cases at agreement 1.00 were named to check first: a pointer to no doubt."""
    summary = PredictionSummary(3, 0, 0, tmp_path, "the model", least_agreed=(("a", 0.9999), ("b", 1.0)))
    assert "check those first" not in summary.line()
    assert summary.line().endswith(f"The folds agree on every case ({AGREEMENT_FILE}: 1.00 each).")
    mixed = PredictionSummary(3, 0, 0, tmp_path, "the model", least_agreed=(("c", 0.5), ("a", 1.0)))
    assert "The folds agree least on c (0.50): check those first" in mixed.line()
