"""Candidate selection: the candidates, the choice among them, the choice from the folds' checks, prediction."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from automedsam.candidate_selection import (KEEP_FRACTION, _choose, box_iou, candidate_boxes,
                                            choose_selected_labels, select_candidates)
from automedsam.errors import AutomedsamError
from automedsam.inference import Predictor
from automedsam.inference.model_folder import open_model_folder
from automedsam.inference.predictor import selection_choices
from tests.test_box_refinement import _encoded_toy, _single_target_model
from tests.toy_model import INNER, IMAGE_SHAPE, shared_foundation, toy_image


def test_candidates_are_the_components_of_the_fold_mean_and_of_each_fold_without_duplicates():
    folds = np.zeros((3, 64, 64), np.float32)
    folds[:, 10:20, 10:20] = 0.9  # every fold: one candidate, found in the mean first
    folds[0, 10, 10:20] = 0.0  # fold 0's version of it is almost the same box: a duplicate
    folds[1, 40:50, 40:56] = 0.8  # only fold 1 marks this: a candidate of its own
    folds[2, 60:62, 0:3] = 0.9  # 6 px: a speck, not a candidate
    assert candidate_boxes(folds) == [[10, 10, 19, 19], [40, 40, 55, 49]]
    assert candidate_boxes(np.zeros((2, 8, 8), np.float32)) == []


def test_box_iou():
    assert box_iou([0, 0, 9, 9], [0, 0, 9, 9]) == 1.0
    assert box_iou([0, 0, 9, 9], [10, 10, 19, 19]) == 0.0
    assert box_iou([0, 0, 9, 9], [5, 0, 14, 9]) == pytest.approx(50 / 150)


def _square(y0, x0, size, shape=(32, 32)):
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[y0:y0 + size, x0:x0 + size] = True
    return mask


def test_the_best_candidate_is_kept_with_distinct_ones_nearly_as_good():
    masks = torch.stack([_square(0, 0, 8), _square(20, 20, 8), _square(2, 2, 8), _square(0, 20, 6),
                         torch.zeros((32, 32), dtype=torch.bool)])
    scores = [0.9, 0.9 * KEEP_FRACTION, 0.85, 0.9 * KEEP_FRACTION - 0.01, 1.0]
    # index 4 scores best but has no outline; 2 overlaps 0 (the same object); 3 falls short of the fraction
    assert _choose(scores, masks) == [0, 1]
    assert _choose([0.0, 0.0], masks[:2]) == [], "no fold marks any candidate: nothing to select"


def test_selection_keeps_what_the_folds_agree_on_outlined_by_the_frozen_model():
    foundation, embedding, frame = _encoded_toy()
    box = [round(v) for v in foundation.to_low_res(INNER, frame)]
    folds = torch.zeros((3, 2, 1, 256, 256))
    folds[:, 0, 0, box[1]:box[3] + 1, box[0]:box[2] + 1] = 0.9  # every fold marks the inner square
    folds[0, 0, 0, 120:140, 200:230] = 0.95  # one fold also marks a patch of background
    folds[:, 1, 0, 10:20, 10:20] = 0.3  # second image: nothing predicted
    embeddings = embedding.expand(2, -1, -1, -1)
    selected = select_candidates(folds, embeddings, foundation)
    sparse, dense = foundation.box_prompt(torch.tensor([box], dtype=torch.float32))
    expected = torch.sigmoid(foundation.decode(embedding, sparse, dense))[0, 0]
    inside = selected[0, 0, box[1]:box[3] + 1, box[0]:box[2] + 1]
    assert torch.allclose(inside, expected[box[1]:box[3] + 1, box[0]:box[2] + 1], atol=1e-5)
    assert selected[0, 0, 120:140, 200:230].max() < 0.5, "the patch only one fold marks is dropped"
    assert torch.equal(selected[1], folds[:, 1].mean(dim=0)), "no candidate: the fold mean is kept"


def test_the_choice_needs_selection_to_beat_both_learned_and_refined():
    fold_a = {"1": {"per_sample": [{"learned": 0.5, "refined": 0.6, "selected": 0.8},
                                   {"learned": 0.8, "refined": 0.7, "selected": None}]},
              "2": {"per_sample": [{"learned": 0.5, "refined": 0.9, "selected": 0.8}]}}
    fold_b = {"1": {"per_sample": [{"learned": 0.7, "refined": 0.6, "selected": 0.7}]},
              "3": {"per_sample": [{"learned": 0.5, "refined": 0.6}]}}  # a check from before selection existed
    choices = choose_selected_labels([fold_a, fold_b])
    assert choices[1]["select"] and choices[1]["samples"] == 2
    assert choices[1]["selected"] == pytest.approx(0.75) and choices[1]["refined"] == pytest.approx(0.6)
    assert not choices[2]["select"], "refinement does better"
    assert not choices[3]["select"] and choices[3]["samples"] == 0
    assert choose_selected_labels([]) == {}


def test_prediction_selects_as_the_folds_chose_and_as_the_user_forces(tmp_path):
    foundation = shared_foundation()
    better = {"2": {"per_sample": [{"learned": 0.6, "refined": 0.7, "selected": 0.9}]}}
    model_dir = _single_target_model(tmp_path, foundation, {0: better, 1: better})
    folder = open_model_folder(model_dir, folds=[0, 1], checkpoint="final")
    assert selection_choices(folder)[2]["select"]
    assert not selection_choices(folder, "off")[2]["select"]
    with pytest.raises(AutomedsamError, match="must be one of"):
        selection_choices(folder, "always")
    image = toy_image()
    selected = Predictor.from_model(folder, device="cpu").predict_array(image)
    plain = Predictor.from_model(folder, device="cpu", candidate_selection="off",
                                 box_refinement="off").predict_array(image)
    assert selected[0].shape == plain[0].shape == IMAGE_SHAPE
    assert not np.array_equal(selected[1][2], plain[1][2])
    older = {"2": {"per_sample": [{"learned": 0.6, "refined": 0.7}]}}
    for fold in (0, 1):
        (model_dir / f"fold_{fold}" / "validation" / "summary.json").write_text(
            json.dumps({"box_refinement": older}))
    choice = selection_choices(open_model_folder(model_dir, folds=[0, 1], checkpoint="final"))[2]
    assert not choice["select"] and choice["samples"] == 0
