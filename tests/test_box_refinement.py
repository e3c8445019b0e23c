"""Box refinement: component boxes, the refined probabilities, the choice from the folds' checks, prediction."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from automedsam.box_refinement import (choose_refined_labels, component_boxes, image_region, refine_with_boxes,
                                      refinement_applies)
from automedsam.errors import AutomedsamError
from automedsam.inference import Predictor
from automedsam.inference.model_folder import open_model_folder
from automedsam.inference.predictor import refined_labels, refinement_choices
from automedsam.inference.run import _model_text
from automedsam.checkpoint import save_checkpoint
from automedsam.evaluation import dice
from automedsam.foundation.frame import box_to_frame, logits_to_shape, make_frame
from automedsam.prompt_module import build_prompt_module, modules_state_dict
from tests.toy_model import (INNER, IMAGE_SHAPE, fold_modules, shared_foundation, toy_image, toy_plans,
                             write_model_folder)


def test_component_boxes_keeps_objects_and_drops_specks_largest_first():
    mask = np.zeros((40, 50), bool)
    mask[5:10, 5:12] = True  # 35 px
    mask[20:30, 30:40] = True  # 100 px, the largest
    mask[35, 2] = True  # a speck: under a fifth of the largest
    mask[30:32, 45:48] = True  # 6 px: also a speck
    assert component_boxes(mask) == [[30, 20, 39, 29], [5, 5, 11, 9]]
    assert component_boxes(mask, min_fraction=0.0)[-1] in ([2, 35, 2, 35], [45, 30, 47, 31])
    assert component_boxes(np.zeros((8, 8), bool)) == []


def test_diagonal_neighbours_are_one_component():
    mask = np.eye(6, dtype=bool)
    assert component_boxes(mask) == [[0, 0, 5, 5]]


def _encoded_toy():
    foundation = shared_foundation()
    prepared, frame = foundation.prepare(toy_image())
    return foundation, foundation.encode(prepared[None]), frame


def test_refinement_replaces_a_rough_mask_by_the_frozen_models_box_mask():
    foundation, embedding, frame = _encoded_toy()
    box = [round(v) for v in foundation.to_low_res(INNER, frame)]
    rough = torch.zeros((2, 1, 256, 256))
    rough[0, 0, box[1]:box[3] + 1, box[0]:box[2] + 1] = 0.9  # the inner square as a coarse learned mask
    rough[1, 0, 10:20, 10:20] = 0.3  # below the threshold: nothing predicted, nothing to outline
    embeddings = embedding.expand(2, -1, -1, -1)
    refined = refine_with_boxes(rough, embeddings, foundation)
    sparse, dense = foundation.box_prompt(torch.tensor([box], dtype=torch.float32))
    expected = torch.sigmoid(foundation.decode(embedding, sparse, dense))[0, 0]
    inside = refined[0, 0, box[1]:box[3] + 1, box[0]:box[2] + 1]
    assert torch.allclose(inside, expected[box[1]:box[3] + 1, box[0]:box[2] + 1], atol=1e-5)
    outside = refined[0, 0].clone()
    outside[box[1]:box[3] + 1, box[0]:box[2] + 1] = 0
    assert outside.abs().max() == 0, "a box's mask is cut to its box"
    assert torch.equal(refined[1], rough[1]), "an image without predicted foreground keeps its probabilities"
    assert not torch.equal(inside, rough[0, 0, box[1]:box[3] + 1, box[0]:box[2] + 1])


def test_refinement_applies_to_box_prompted_targets_that_are_not_rings():
    assert refinement_applies({"label": 1})
    assert refinement_applies({"label": 1, "pseudo_label": "box_prompt", "subtract": []})
    assert not refinement_applies({"label": 1, "pseudo_label": "inscribed_ellipse"})
    assert not refinement_applies({"label": 2, "subtract": [3]})


def test_choice_pools_the_folds_validation_samples():
    fold_a = {"1": {"per_sample": [{"learned": 0.5, "refined": 0.9}, {"learned": 0.8, "refined": None}]},
              "2": {"per_sample": [{"learned": 0.9, "refined": 0.7}]}}
    fold_b = {"1": {"per_sample": [{"learned": 0.7, "refined": 0.6}]}, "2": {"per_sample": []}}
    choices = choose_refined_labels([fold_a, fold_b])
    assert choices[1]["refine"] and choices[1]["samples"] == 2
    assert choices[1]["refined"] == pytest.approx(0.75) and choices[1]["learned"] == pytest.approx(0.6)
    assert not choices[2]["refine"] and choices[2]["samples"] == 1
    assert choose_refined_labels([]) == {}


def _single_target_model(results_root, foundation, checks):
    """The toy model with its core square as the only target and the given validation checks per fold."""
    model_dir = write_model_folder(results_root, foundation)
    plans = toy_plans(targets=[{"label": 2, "name": "core", "region": [2], "subtract": [], "per_component": False}])
    plans["postprocessing"] = {"largest_component": {"2": True}, "reason": "test"}
    (model_dir / "plans.json").write_text(json.dumps(plans))
    for fold in (0, 1):
        weights = modules_state_dict({2: fold_modules(foundation, plans, fold)[2]})
        save_checkpoint(model_dir / f"fold_{fold}", "final", weights, {"fold": fold})
    for fold, check in checks.items():
        (model_dir / f"fold_{fold}" / "validation").mkdir(parents=True)
        (model_dir / f"fold_{fold}" / "validation" / "summary.json").write_text(json.dumps({"box_refinement": check}))
    return model_dir


def test_prediction_refines_as_the_folds_chose_and_as_the_user_forces(tmp_path):
    foundation = shared_foundation()
    better = {"2": {"per_sample": [{"learned": 0.6, "refined": 0.9}]}}
    model_dir = _single_target_model(tmp_path, foundation, {0: better, 1: better})
    folder = open_model_folder(model_dir, folds=[0, 1], checkpoint="final")
    assert refinement_choices(folder)[2]["refine"]
    assert not refinement_choices(folder, "off")[2]["refine"]
    with pytest.raises(AutomedsamError, match="must be one of"):
        refinement_choices(folder, "sometimes")
    image = toy_image()
    refined = Predictor.from_model(folder, device="cpu").predict_array(image)
    plain = Predictor.from_model(folder, device="cpu", box_refinement="off").predict_array(image)
    assert refined[0].shape == plain[0].shape == IMAGE_SHAPE
    assert not np.array_equal(refined[1][2], plain[1][2])
    worse = {"2": {"per_sample": [{"learned": 0.9, "refined": 0.6}]}}
    (model_dir / "fold_0" / "validation" / "summary.json").write_text(json.dumps({"box_refinement": worse}))
    (model_dir / "fold_1" / "validation" / "summary.json").write_text(json.dumps({"box_refinement": worse}))
    assert not refinement_choices(open_model_folder(model_dir, folds=[0, 1], checkpoint="final"))[2]["refine"]


def test_refinement_on_names_the_targets_it_cannot_refine_and_why(tmp_path):
    """--box-refinement on did nothing and said nothing for a ring or a target planned with another pseudo-label: it
    applies to box_prompt targets that are not rings only, and its choices now say so per target."""
    targets = [{"label": 1, "name": "ring", "region": [1, 2], "subtract": [2], "per_component": False},
               {"label": 2, "name": "core", "region": [2], "subtract": [], "per_component": False,
                "pseudo_label": "box_prompt"},
               {"label": 3, "name": "head", "region": [3], "subtract": [], "per_component": False,
                "pseudo_label": "inscribed_ellipse"}]
    model_dir = tmp_path / "Dataset001_Toy" / "default__toyPlans"
    model_dir.mkdir(parents=True)
    (model_dir / "plans.json").write_text(json.dumps(toy_plans(targets=targets)))
    save_checkpoint(model_dir / "fold_0", "final", {}, {"fold": 0})
    folder = open_model_folder(model_dir)
    for mode in ("on", "auto", "off"):
        choices = refinement_choices(folder, mode)
        assert sorted(choices) == [1, 2, 3], mode
        assert choices[1] == {"refine": False, "reason": "a ring: its box prompt outlines the cavity it encloses"}
        assert not choices[3]["refine"] and "planned with pseudo_label inscribed_ellipse, not box_prompt" in \
            choices[3]["reason"], mode
    assert refinement_choices(folder, "on")[2] == {"refine": True, "reason": "--box-refinement on"}
    assert refined_labels(folder, "on") == [2]
    summary = _model_text(folder, "on", "off", 0)
    assert ("box refinement of label 2 (--box-refinement on), --box-refinement on cannot refine label 1 (a ring: "
            "its box prompt outlines the cavity it encloses); label 3 (planned with pseudo_label inscribed_ellipse"
            in summary)
    assert "cannot refine" not in _model_text(folder, "auto", "off", 0)


def test_the_documentation_says_which_targets_box_refinement_applies_to():
    """cli.md and training.md said nothing of the targets --box-refinement on leaves as learned."""
    pages = Path(__file__).parents[1] / "documentation"
    cli = " ".join((pages / "cli.md").read_text(encoding="utf-8").split())
    training = " ".join((pages / "training.md").read_text(encoding="utf-8").split())
    assert 'It applies only to targets planned with `pseudo_label` `"box_prompt"` that are not rings' in cli
    assert "Those keep the learned mask whatever the mode, `on` included" in cli
    assert "the only targets `automedsam_predict --box-refinement` refines, `on` included" in training


def test_a_model_without_checks_is_not_refined(tmp_path):
    model_dir = _single_target_model(tmp_path, shared_foundation(), {})
    choice = refinement_choices(open_model_folder(model_dir, folds=[0, 1], checkpoint="final"))[2]
    assert not choice["refine"] and "no validation check" in choice["reason"]


def test_the_training_check_scores_each_validation_sample_learned_and_refined_against_its_own_boxes(tmp_path):
    """The only check of refinement_check was a range test over a list that could be empty: each sample's figures
    must be its own (learned vs refined not swapped, no row of another sample)."""
    from automedsam.training.data import load_sample_set
    from automedsam.training.initialisation import start_at_mean_box
    from automedsam.training.pseudo_labels import box_pseudo_labels
    from automedsam.training.refinement_check import refinement_check
    from tests.test_training import ELLIPSE, make_plans, write_preprocessed

    foundation = shared_foundation()
    plans = make_plans([{**ELLIPSE, "pseudo_label": "box_prompt"}])
    folder = write_preprocessed(tmp_path, plans, n_samples=4, n_train=1, foundation=foundation)
    ids = ["blob001", "blob002", "blob003"]
    samples = load_sample_set(folder, plans, ids, foundation)
    module = build_prompt_module(plans)
    start_at_mean_box(module, foundation, samples.targets[1].boxes_low_res)
    checks = refinement_check({1: module}, foundation, samples, plans["targets"], device=torch.device("cpu"))
    recorded = {entry["sample_id"]: entry for entry in checks["1"]["per_sample"]}
    assert sorted(recorded) == ids
    embeddings = samples.embedding_batch([0, 1, 2], torch.device("cpu"))
    with torch.no_grad():
        learned = torch.sigmoid(foundation.decode(embeddings, *module.eval()(embeddings)).float())
        refined = refine_with_boxes(learned, embeddings, foundation)
    references = box_pseudo_labels(foundation, embeddings, samples.targets[1].boxes_low_res)[:, 0].numpy() > 0.5
    for index, sid in enumerate(ids):
        reference = references[index]
        assert recorded[sid]["learned"] == pytest.approx(dice(reference, learned[index, 0].numpy() > 0.5))
        assert recorded[sid]["refined"] == pytest.approx(dice(reference, refined[index, 0].numpy() > 0.5))
    assert any(entry["learned"] != entry["refined"] for entry in recorded.values())


def test_the_training_check_leaves_out_the_foreground_predicted_in_the_padding(tmp_path):
    """Prediction crops the low-res frame's zero padding away, so foreground there never reaches a label map:
    counted, it lowered the learned and refined Dice of samples whose padding (below a landscape image) the decoder
    filled, and with them the choice to refine."""
    from automedsam.training.data import load_sample_set
    from automedsam.training.initialisation import start_at_mean_box
    from automedsam.training.refinement_check import refinement_check
    from tests.test_training import ELLIPSE, CheapFoundation, make_plans, write_preprocessed

    class PaddingForeground(CheapFoundation):
        """The cheap decoder, sure of an object in the padding rows below the image."""

        def decode(self, embeddings, sparse, dense):
            logits = super().decode(embeddings, sparse, dense).clone()
            logits[:, :, 192:] = 10.0
            return logits

    plans = make_plans([{**ELLIPSE, "pseudo_label": "box_prompt"}])
    folder = write_preprocessed(tmp_path, plans, n_samples=4, n_train=1)
    plain, padded = CheapFoundation(), PaddingForeground()
    samples = load_sample_set(folder, plans, ["blob001", "blob002", "blob003"], plain)
    assert all(frame.resized_shape == (192, 256) for frame in samples.frames), "landscape: rows 192-255 are padding"
    module = build_prompt_module(plans)
    start_at_mean_box(module, plain, samples.targets[1].boxes_low_res)
    expected = refinement_check({1: module}, plain, samples, plans["targets"], device=torch.device("cpu"))
    checked = refinement_check({1: module}, padded, samples, plans["targets"], device=torch.device("cpu"))
    assert any((entry["learned"] or 0) > 0 for entry in expected["1"]["per_sample"]), "padding would lower these"
    assert checked == expected


BOX_PROMPT = (40.0, 0.3)  # the stand-in's box prompt: a sharp outline of everything brighter than 0.3


class IntensityFoundation:
    """A stand-in foundation model with LiteMedSAM's geometry whose logits depend on pixel intensity alone: a prompt
    (a, b) predicts a * (intensity - b), the box prompt is BOX_PROMPT; cheap, and its outlines can be reasoned out."""

    name, input_size, low_res_size, device = "intensity", 256, 256, torch.device("cpu")

    def frame_for(self, shape):
        return make_frame(shape[:2], self.input_size)

    def prepare(self, image2d):
        frame = self.frame_for(image2d.shape)
        image = torch.as_tensor(np.asarray(image2d, dtype=np.float32))[None, None]
        resized = F.interpolate(image, size=frame.resized_shape, mode="bilinear", align_corners=False,
                                antialias=True)[0, 0]
        resized = (resized - resized.min()) / torch.clamp(resized.max() - resized.min(), min=1e-8)
        prepared = torch.zeros((3, self.input_size, self.input_size))
        prepared[:, :frame.resized_shape[0], :frame.resized_shape[1]] = resized
        return prepared, frame

    def encode(self, images):
        return F.pixel_unshuffle(images[:, :1], 4)  # (B, 16, 64, 64): the intensities, losslessly

    def decode(self, embeddings, sparse, dense):
        slope, threshold = sparse[:, 0, 0, None, None, None], sparse[:, 0, 1, None, None, None]
        return slope * (F.pixel_shuffle(embeddings, 4) - threshold)

    def box_prompt(self, boxes):
        sparse = torch.tensor(BOX_PROMPT).repeat(len(boxes), 1, 1)
        return sparse, torch.zeros((len(boxes), 1))

    def logits_to_original(self, low_res, frame):
        return logits_to_shape(low_res, frame, self.input_size)

    def to_low_res(self, box, frame):
        return box_to_frame(box, frame.scale, self.low_res_size)


class PaddingFilling(IntensityFoundation):
    """The stand-in whose learned prompts with threshold `filled` (all when None), not the box prompts, are sure of
    an object in the padding rows below a 360 x 560 image (165 of the 256 low-res rows hold the image)."""

    def __init__(self, filled: float | None = None) -> None:
        self.filled = filled

    def decode(self, embeddings, sparse, dense):
        logits = super().decode(embeddings, sparse, dense).clone()
        learned = sparse[:, 0, 0] != BOX_PROMPT[0]
        if self.filled is not None:
            learned &= sparse[:, 0, 1] == self.filled
        logits[learned, :, 165:] = 10.0
        return logits


class IntensityPrompt(nn.Module):
    """A learned prompt module of the stand-in: the prompt (slope, threshold) whatever the image."""

    def __init__(self, slope: float, threshold: float) -> None:
        super().__init__()
        self.prompt = nn.Parameter(torch.tensor([slope, threshold]), requires_grad=False)

    def forward(self, embeddings):
        return self.prompt.expand(len(embeddings), 1, 2), torch.zeros((len(embeddings), 1))


def one_target_plans() -> dict:
    plans = toy_plans(targets=[{"label": 1, "name": "nodule", "region": [1], "subtract": [], "per_component": False}])
    plans["postprocessing"] = {"largest_component": {"1": True}, "reason": "test"}
    return plans


def landscape_nodule() -> np.ndarray:
    """A THYROID-shaped 360 x 560 image with a bright nodule (a Gaussian blob) in the middle."""
    rows, columns = np.mgrid[0:360, 0:560]
    return 255.0 * np.exp(-(((rows - 180) / 25) ** 2 + ((columns - 280) / 35) ** 2) / 2)


def test_refinement_outlines_the_nodule_when_the_decoder_fills_the_padding_below_the_image():
    """The band a decoder filled below a landscape image was the largest component of the low-res frame: the nodule,
    smaller than a fifth of it, was dropped as a speck and the label map lost it."""
    folds = [{1: IntensityPrompt(6.0, 0.5)}, {1: IntensityPrompt(6.0, 0.5)}]
    expected = Predictor(IntensityFoundation(), one_target_plans(), folds, refined_labels=[1]).predict_array(
        landscape_nodule())[0]
    filled = Predictor(PaddingFilling(), one_target_plans(), folds, refined_labels=[1]).predict_array(
        landscape_nodule())[0]
    assert expected[180, 280] == 1 and expected.sum() > 3000
    assert np.array_equal(filled, expected)



def test_the_image_region_leaves_out_a_low_res_row_mostly_padding_for_a_1024_input_model():
    """A 390 x 1024 image covers 97.5 of SAM ViT-B's 256 low-res rows; the label map leaves row 97 out
    (`logits_to_original`). Counted, a decoder filling the padding made row 97 alone a 256-pixel band, and a 6 x 6
    nodule, below a fifth of it, was dropped as a speck."""
    sam_geometry = SimpleNamespace(input_size=1024, low_res_size=256)
    region = image_region(sam_geometry, make_frame((390, 1024), 1024))
    predicted = np.zeros((256, 256), dtype=bool)
    predicted[97:] = True  # the decoder fills the padding, and the half-padding row 97
    predicted[40:46, 100:106] = True
    inside = np.zeros_like(predicted)
    inside[region] = predicted[region]
    assert component_boxes(inside) == [[100, 40, 105, 45]]


def test_the_image_region_of_litemedsam_is_its_resized_image():
    """LiteMedSAM's low-res frame is its input: every resized row and column reaches the label map."""
    lite_geometry = SimpleNamespace(input_size=256, low_res_size=256)
    for shape in [(390, 1024), (1024, 390), (101, 512), (300, 200), (512, 512)]:
        frame = make_frame(shape, 256)
        rows, columns = frame.resized_shape
        assert image_region(lite_geometry, frame) == (slice(0, rows), slice(0, columns))
