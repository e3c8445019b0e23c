"""The second look: its trigger, its window, the crop and paste, the choice from the folds' checks, prediction."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage

from automedsam.errors import AutomedsamError
from automedsam.evaluation import dice
from automedsam.inference import Predictor
from automedsam.inference.model_folder import open_model_folder
from automedsam.inference.predictor import FirstPass, second_look_choices
from automedsam.planning.planner import plan_second_look
from automedsam.prompt_module import build_prompt_module
from automedsam.samples import stored_image
from automedsam.second_look import (CHECK_ZOOM, MAX_ZOOM, MIN_GAIN, Unsure, box_in_window, centred_window,
                                    choose_second_look, crop_window, look_window, paste_window, pasted_look,
                                    unsure_object)
from automedsam.training.data import load_sample_set
from automedsam.training.initialisation import start_at_mean_box
from automedsam.training.second_look_check import checked_object_sizes, second_look_check
from tests.test_box_refinement import IntensityFoundation, IntensityPrompt, one_target_plans
from tests.toy_model import IMAGE_SHAPE, fold_modules, shared_foundation, toy_image, toy_plans, write_model_folder

SHAPE = (120, 160)


def _disk(shape, centre, radius):
    rows, columns = np.ogrid[:shape[0], :shape[1]]
    return (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius ** 2


def test_the_trigger_fires_only_when_the_confident_core_is_much_smaller_than_the_mask():
    sure = np.where(_disk(SHAPE, (60, 80), 20), 0.99, 0.01)
    assert unsure_object(sure) is None
    unsure = np.where(_disk(SHAPE, (60, 80), 30), 0.7, 0.01)
    unsure[_disk(SHAPE, (55, 75), 10)] = 0.99
    found = unsure_object(unsure)
    assert found.core == (65, 45, 85, 65) and np.array_equal(found.component, _disk(SHAPE, (60, 80), 30))
    assert unsure_object(np.full(SHAPE, 0.01)) is None


def test_the_trigger_reads_the_core_inside_the_object_it_measures():
    """The largest core was compared with the largest mask wherever it lay: a sure small object elsewhere became the
    window of a spilled large one, and a sure object whose core one hesitant row split was looked at through half."""
    spilled = np.where(_disk(SHAPE, (30, 30), 25), 0.7, 0.01)
    spilled[_disk(SHAPE, (30, 30), 5)] = 0.99
    spilled[_disk(SHAPE, (90, 130), 12)] = 0.99  # a smaller object, sure of itself
    assert unsure_object(spilled).core == (25, 25, 35, 35)
    assert np.array_equal(unsure_object(spilled).component, _disk(SHAPE, (30, 30), 25)), "the sure object is not it"
    split = np.where(_disk(SHAPE, (60, 80), 30), 0.99, 0.01)
    split[60] = np.where(split[60] > 0.5, 0.85, split[60])
    assert unsure_object(split) is None


def test_the_window_gives_the_core_the_labelled_share_and_stays_inside_the_image():
    box = (70, 50, 89, 69)  # 20 x 20 of 120 x 160: share 1/48
    top, left, height, width = look_window(box, SHAPE, object_size=4 / 48)
    assert (height, width) == pytest.approx((60, 80))  # zoom 2: the box now takes 4/48 of the window
    assert (top + height / 2, left + width / 2) == pytest.approx((60, 80))
    assert look_window(box, SHAPE, object_size=1.0)[2] == pytest.approx(SHAPE[0] / MAX_ZOOM), "zoom is capped"
    assert look_window(box, SHAPE, object_size=1 / 48) is None, "at the labelled share the window is the image"
    assert look_window(box, SHAPE, object_size=1 / 100) is None, "never zoomed out"
    corner = look_window((0, 0, 9, 9), SHAPE, object_size=0.01)
    assert corner[0] == pytest.approx(0) and corner[1] == pytest.approx(0)
    top, left, height, width = look_window((10, 55, 129, 64), SHAPE, object_size=0.2)  # long and thin
    assert left <= 10 - 0.05 * width and left + width >= 130 + 0.05 * width, "the box stays inside the window"
    assert look_window((0, 55, 159, 64), SHAPE, object_size=0.2) is None, "a box across the image: no zoom fits"


def test_a_crop_pasted_back_is_the_image_inside_the_window_and_a_zoom_out_has_a_black_border():
    image = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    image = np.asarray(np.kron(image[::8, ::8], np.ones((8, 8))), dtype=np.float32)  # smooth enough to resample
    window = (30.0, 40.0, 60.0, 80.0)
    values, covered = paste_window(crop_window(image, window), window, SHAPE)
    assert covered.sum() == 60 * 80 and covered[30:90, 40:120].all()
    inner = covered.copy()
    inner[[30, 89], :] = inner[:, [40, 119]] = False
    assert np.abs(values[inner] - image[inner]).mean() < 0.05
    shrunk = crop_window(image, centred_window(SHAPE, 0.5))
    assert shrunk[:25].max() == 0 and shrunk[-25:].max() == 0 and shrunk[60, 80] > 0
    assert box_in_window((40, 30, 119, 89), centred_window(SHAPE, 0.5), SHAPE) == (60, 45, 99, 74)


def test_pasting_clears_the_object_looked_at_outside_the_window_and_keeps_the_others():
    """Box refinement outlines the object anew (the trigger reads the mask before it), cut to the object's box: the
    refined outline's part outside the trigger's mask is the same object, and goes with it."""
    first = np.full(SHAPE, 0.01, dtype=np.float32)
    refined = _disk(SHAPE, (60, 80), 40)  # past the trigger's mask, and past the window
    refined[:29] = refined[92:] = refined[:, :49] = refined[:, 112:] = False  # cut to the trigger's box, a pixel wider
    other = _disk(SHAPE, (10, 10), 6)
    first[refined], first[other] = 0.95, 0.99
    window = (40.0, 40.0, 40.0, 80.0)  # rows 40-79, columns 40-119
    pasted = pasted_look(first, np.zeros(SHAPE, dtype=np.float32), window, Unsure((75, 55, 85, 65),
                                                                                   _disk(SHAPE, (60, 80), 30)))
    assert np.array_equal(pasted > 0.5, other)
    assert np.array_equal(pasted[other], first[other]) and pasted.dtype == np.float32


def test_pasting_keeps_another_object_that_refined_outlines_joined_to_the_one_looked_at():
    """Box-refined outlines of two nearby objects can touch: the other object, outside the window, stays."""
    trigger = np.zeros(SHAPE, dtype=bool)
    trigger[40:60, 40:60] = True
    first = np.full(SHAPE, 0.01, dtype=np.float32)
    first[42:58, 42:58] = first[50, 58:70] = 0.9  # the refined object, and a thin bridge of refined outline
    first[45:60, 70:95] = 0.9  # another object, one component with the first through the bridge
    pasted = pasted_look(first, np.zeros(SHAPE, dtype=np.float32), (35.0, 35.0, 30.0, 30.0), Unsure((48, 48, 51, 51),
                                                                                                    trigger))
    assert (pasted[45:60, 70:95] == first[45:60, 70:95]).all()



def test_pasting_keeps_another_object_inside_the_box_of_the_one_looked_at():
    """An L-shaped spilled object's box holds a separate object: clearing the box's foreground took it along."""
    trigger = np.zeros(SHAPE, dtype=bool)
    trigger[50:90, 40:48] = trigger[82:90, 40:95] = True  # an L: its box spans rows 50-89, columns 40-94
    first = np.where(trigger, 0.9, 0.01).astype(np.float32)
    first[60:72, 70:82] = 0.9  # another object inside that box, apart from the L
    pasted = pasted_look(first, np.zeros(SHAPE, dtype=np.float32), (35.0, 35.0, 20.0, 20.0), Unsure((40, 50, 47, 60),
                                                                                                    trigger))
    assert (pasted[60:72, 70:82] == first[60:72, 70:82]).all()
    assert (pasted[82:90, 60:95] == 0).all(), "the L itself is cleared outside the window"


def test_pasting_keeps_another_object_the_window_covers():
    """A dual-view ultrasound capture, two panels side by side with a nodule in each: the window zoomed onto the
    unsure nodule beside the divider covered most of the other panel's nodule, and its prediction, zoomed onto one
    nodule, dropped it: a sliver outside the window was all that was left of it."""
    shape = (360, 560)
    looked_at, other = _disk(shape, (180, 230), 35), _disk(shape, (180, 360), 30)
    first = np.full(shape, 0.02, dtype=np.float32)
    first[looked_at], first[_disk(shape, (180, 230), 11)], first[other] = 0.7, 0.95, 0.97
    unsure = unsure_object(first)
    assert np.array_equal(unsure.component, looked_at)
    window = look_window(unsure.core, shape, object_size=0.121)
    corrected = _disk(shape, (180, 230), 23)
    seen = crop_window(np.where(corrected, 0.97, 0.02).astype(np.float32), window)  # the looked-at nodule only
    _, covered = paste_window(seen, window, shape)
    assert covered[other].mean() > 0.5, "most of the other nodule lies in the window"
    pasted = pasted_look(first, seen, window, unsure)
    assert (pasted[other] >= first[other]).all(), "the other nodule keeps its first-pass probability"
    assert dice(corrected | other, pasted > 0.5) > 0.98, "the nodule looked at takes the window's outline"


def test_the_choice_pools_the_folds_checks():
    better = {"1": {"per_sample": [{"first": 0.5, "second": 0.9}, {"first": 0.8, "second": None}]}}
    worse = {"1": {"per_sample": [{"first": 0.9, "second": 0.7}]}}
    choices = choose_second_look([better, worse])
    assert choices[1]["look"] and choices[1]["samples"] == 2
    assert choices[1]["second"] == pytest.approx(0.8) and choices[1]["first"] == pytest.approx(0.7)
    assert not choose_second_look([worse])[1]["look"]
    slightly = {"1": {"per_sample": [{"first": 0.5, "second": 0.5 + MIN_GAIN / 2}]}}
    assert not choose_second_look([slightly])[1]["look"], "a gain within the check's noise does not pay a pass"
    assert not choose_second_look([{"1": {"per_sample": []}}])[1]["look"], "nothing triggered: no second look"


def test_the_planner_records_the_labelled_objects_median_size():
    statistics = {"label_statistics": {"1": {"relative_size": {"median": 0.3}}, "2": {"relative_size": None}}}
    assert plan_second_look(statistics)["object_size"] == {"1": 0.3}


class _ScaleBlindPredictor(Predictor):
    """The real prediction pipeline around a model that, like LiteMedSAM on HC18's small heads, outlines a bright
    object well at the labelled scale but spills around it, less sure, when the object is small in its input."""

    def _predict_batch(self, slices, *, embeddings=None, agreement=None):
        out = []
        for image in slices:
            found = image > 0.5
            probability = np.where(found, 0.99, 0.01).astype(np.float32)
            if found.mean() < 0.02:
                rows, columns = np.nonzero(found)
                spill = _disk(image.shape, (rows.mean(), columns.mean()), 2.5 * np.sqrt(found.sum() / np.pi))
                probability[spill & ~found] = 0.7
            out.append(probability)
        return FirstPass({label: np.stack(out) for label in self.labels}, {})


def _scale_blind(second_look):
    plans = toy_plans(targets=[{"label": 1, "name": "blob", "region": [1], "subtract": [], "per_component": False}])
    plans["postprocessing"] = {"largest_component": {"1": True}, "reason": "test"}
    foundation = shared_foundation()
    return _ScaleBlindPredictor(foundation, plans, [fold_modules(foundation, plans, 0)], second_look=second_look)


def test_a_small_object_is_outlined_only_with_the_second_look():
    image = np.zeros(SHAPE, dtype=np.float32)
    truth = _disk(SHAPE, (40, 100), 7)  # 1.3 % of the image; the labelled objects took 10 %
    image[truth] = 255.0
    plain = _scale_blind(None)
    looking = _scale_blind({1: 0.1})
    first = plain.predict_array(image)[0] == 1
    second = looking.predict_array(image)[0] == 1
    assert dice(truth, first) < 0.3
    assert dice(truth, second) > 0.9
    assert (plain.second_looks, looking.second_looks) == (0, 1)
    large = np.zeros(SHAPE, dtype=np.float32)
    large[_disk(SHAPE, (60, 80), 25)] = 255.0
    assert np.array_equal(looking.predict_array(large)[1][1], plain.predict_array(large)[1][1])
    assert looking.second_looks == 1, "a sure first pass is not looked at again"


class _TwoTargetScaleBlindPredictor(Predictor):
    """The scale-blind model of two targets: label 1 is the bright object (255), label 2 the grey one (128)."""

    def _predict_batch(self, slices, *, embeddings=None, agreement=None):
        out = {1: [], 2: []}
        for image in slices:
            for label, found in ((1, image > 0.75), (2, (image > 0.25) & (image < 0.75))):
                probability = np.where(found, 0.99, 0.01).astype(np.float32)
                if 0 < found.mean() < 0.02:
                    rows, columns = np.nonzero(found)
                    spill = _disk(image.shape, (rows.mean(), columns.mean()), 2.5 * np.sqrt(found.sum() / np.pi))
                    probability[spill & ~found] = 0.7
                out[label].append(probability)
        return FirstPass({label: np.stack(values) for label, values in out.items()}, {})


def test_each_target_is_looked_at_through_its_own_window():
    """One window around two targets' cores was zoomed for neither (far apart: no look at all)."""
    image = np.zeros(SHAPE, dtype=np.float32)
    first, second = _disk(SHAPE, (25, 25), 7), _disk(SHAPE, (95, 135), 7)
    image[first], image[second] = 255.0, 128.0
    plans = toy_plans(targets=[{"label": 1, "name": "a", "region": [1], "subtract": [], "per_component": False},
                               {"label": 2, "name": "b", "region": [2], "subtract": [], "per_component": False}])
    foundation = shared_foundation()
    predictor = _TwoTargetScaleBlindPredictor(foundation, plans, [fold_modules(foundation, plans, 0)],
                                              second_look={1: 0.1, 2: 0.1})
    label_map = predictor.predict_array(image)[0]
    assert predictor.second_looks == 2
    assert dice(first, label_map == 1) > 0.9 and dice(second, label_map == 2) > 0.9


HEAD_SHAPE, HEAD_CENTRE, HEAD_RADIUS, SPILL_RADIUS = (540, 800), (270, 400), 30, 200  # an HC18 image, a small head


class _FarSpillingPredictor(Predictor):
    """The real pipeline around a model that spills far around a small bright head (value 1) with probability 0.6,
    beyond the window its second look takes (zoomed at most MAX_ZOOM), and outlines it well at twice the scale; it is
    sure of a dimmer object (value 0.7)."""

    def _predict_batch(self, slices, *, embeddings=None, agreement=None):
        out = []
        for image in slices:
            head, other = image > 0.9, (image > 0.5) & (image < 0.9)
            probability = np.where(head, 0.97, np.where(other, 0.99, 0.02)).astype(np.float32)
            if head.mean() < 0.02:
                rows, columns = np.nonzero(head)
                radius = SPILL_RADIUS / HEAD_RADIUS * np.sqrt(head.sum() / np.pi)
                probability[_disk(image.shape, (rows.mean(), columns.mean()), radius) & ~head & ~other] = 0.6
            out.append(probability)
        return FirstPass({label: np.stack(out) for label in self.labels}, {})


def test_the_second_look_replaces_the_whole_object_not_only_its_part_in_the_window():
    """Outside the window the spilled first pass stayed, cut straight at the window's border into two crescents that
    outvoted the corrected head in the largest component: Dice 0 with a perfect second look."""
    head = _disk(HEAD_SHAPE, HEAD_CENTRE, HEAD_RADIUS)
    other = _disk(HEAD_SHAPE, (60, 80), 15)  # outside the window and the spill: another object of the target
    image = np.where(head, 255.0, np.where(other, 180.0, 0.0))
    predictor = _FarSpillingPredictor(IntensityFoundation(), one_target_plans(), [{1: IntensityPrompt(6.0, 0.5)}],
                                      second_look={1: 0.3})
    label_map, probabilities = predictor.predict_array(image)
    assert predictor.second_looks == 1
    assert dice(head, label_map == 1) > 0.95, "the head is kept"
    window = look_window((370, 240, 430, 300), HEAD_SHAPE, object_size=0.3)  # around the head's box
    assert window[2] == pytest.approx(HEAD_SHAPE[0] / MAX_ZOOM), "the spill reaches past the window"
    _, covered = paste_window(np.zeros(HEAD_SHAPE), window, HEAD_SHAPE)
    border = ndimage.binary_dilation(covered) & ~ndimage.binary_erosion(covered)
    found = probabilities[1] > 0.5
    labelled, _ = ndimage.label(found, structure=np.ones((3, 3), dtype=bool))
    assert not np.unique(labelled[border & found]).size, "no piece of the object cut at the window's border"
    assert found[other].all() and probabilities[1][other].min() == pytest.approx(0.99), "other objects stay"


def test_prediction_triggers_where_the_check_did_also_for_a_refined_target():
    """The check triggers on the learned prompt's first pass; prediction triggered on the refined one, which the
    frozen model's box outline makes sure of itself: for a target taking both, the gain the check measured described
    second looks that prediction hardly took."""
    rows, columns = np.mgrid[0:90, 0:140]
    image = np.exp(-(((rows - 45) / 5) ** 2 + ((columns - 70) / 7) ** 2) / 2).astype(np.float32)
    module = IntensityPrompt(6.0, 0.5)
    samples = SimpleNamespace(sample_ids=["blob"], targets={1: SimpleNamespace(boxes_original=[[(60, 35, 80, 55)]])})
    checked = second_look_check({1: module}, IntensityFoundation(), samples, [image], {"1": 0.2})
    assert len(checked["1"]["per_sample"]) == 1, "the check's trigger fires on the shrunk sample"
    shrunk = crop_window(image, centred_window(image.shape, CHECK_ZOOM))
    for refined in ([], [1]):
        predictor = Predictor(IntensityFoundation(), one_target_plans(), [{1: module}], refined_labels=refined,
                              second_look={1: 0.2})
        predictor.predict_array(255.0 * shrunk)
        assert predictor.second_looks == 1, f"refined labels {refined}"


def _model_with_checks(tmp_path, checks, *, sizes=True):
    foundation = shared_foundation()
    model_dir = write_model_folder(tmp_path, foundation)
    plans = json.loads((model_dir / "plans.json").read_text())
    if sizes:
        plans["second_look"] = {"object_size": {"1": 0.3, "2": 0.05}, "reason": "test"}
    (model_dir / "plans.json").write_text(json.dumps(plans))
    for fold, check in checks.items():
        (model_dir / f"fold_{fold}" / "validation").mkdir(parents=True, exist_ok=True)
        (model_dir / f"fold_{fold}" / "validation" / "summary.json").write_text(json.dumps({"second_look": check}))
    return open_model_folder(model_dir, folds=[0, 1], checkpoint="final")


def test_auto_follows_the_folds_checks_and_off_gives_exactly_the_old_output(tmp_path):
    better = {"2": {"per_sample": [{"first": 0.4, "second": 0.9}]}}
    folder = _model_with_checks(tmp_path, {0: better, 1: better})
    choices = second_look_choices(folder)
    assert choices[2]["look"] and choices[2]["object_size"] == 0.05
    assert not choices[1]["look"] and "no second look check" in choices[1]["reason"]
    assert all(choice["look"] for choice in second_look_choices(folder, "on").values())
    assert not any(choice["look"] for choice in second_look_choices(folder, "off").values())
    with pytest.raises(AutomedsamError, match="must be one of"):
        second_look_choices(folder, "sometimes")
    image = toy_image()
    foundation = shared_foundation()
    old = Predictor(foundation, folder.plans, [fold_modules(foundation, folder.plans, fold) for fold in (0, 1)])
    off = Predictor.from_model(folder, device="cpu", box_refinement="off", second_look="off")
    assert off.second_look == {} and Predictor.from_model(folder, device="cpu").second_look == {2: 0.05}
    before, after = old.predict_array(image), off.predict_array(image)
    assert np.array_equal(before[0], after[0])
    assert all(np.array_equal(before[1][label], after[1][label]) for label in before[1])
    assert before[0].shape == IMAGE_SHAPE


def test_plans_without_object_sizes_take_no_second_look_and_on_says_why(tmp_path):
    folder = _model_with_checks(tmp_path, {}, sizes=False)
    choice = second_look_choices(folder)[1]
    assert not choice["look"] and "before the second look" in choice["reason"]
    with pytest.raises(AutomedsamError, match="--second-look on needs"):
        second_look_choices(folder, "on")


def test_on_looks_at_the_targets_with_an_object_size_and_says_why_not_the_others(tmp_path):
    folder = _model_with_checks(tmp_path, {})
    plans = json.loads((folder.path / "plans.json").read_text())
    plans["second_look"]["object_size"] = {"2": 0.05}  # no box of label 1 among the drawn samples
    (folder.path / "plans.json").write_text(json.dumps(plans))
    choices = second_look_choices(open_model_folder(folder.path, folds=[0, 1], checkpoint="final"), "on")
    assert choices[2]["look"] and not choices[1]["look"] and "no object size planned" in choices[1]["reason"]


def test_the_checks_of_the_final_weights_choose_nothing_for_another_epoch_best_checkpoint(tmp_path):
    better = {"2": {"per_sample": [{"first": 0.4, "second": 0.9}]}}
    final = _model_with_checks(tmp_path, {0: better, 1: better})
    for fold in (0, 1):
        summary = final.path / f"fold_{fold}" / "validation" / "summary.json"
        summary.write_text(json.dumps({"checkpoint": "final", "epoch": 9, "second_look": better}))
        for which, epoch in (("best", 4), ("final", 9)):
            (final.path / f"fold_{fold}" / f"checkpoint_{which}.json").write_text(json.dumps({"epoch": epoch}))
            (final.path / f"fold_{fold}" / f"checkpoint_{which}.pt").write_bytes(
                (final.path / f"fold_{fold}" / "checkpoint_final.pt").read_bytes())
    assert second_look_choices(open_model_folder(final.path, folds=[0, 1], checkpoint="final"))[2]["look"]
    best = open_model_folder(final.path, folds=[0, 1], checkpoint="best")
    assert best.second_look_checks() == [] and not second_look_choices(best)[2]["look"]
    (final.path / "fold_0" / "checkpoint_best.json").write_text(json.dumps({"epoch": 9}))  # best was the last epoch
    assert len(open_model_folder(final.path, folds=[0, 1], checkpoint="best").second_look_checks()) == 1
    for fold in (0, 1):  # installed from an archive: no checkpoint metadata, the epochs its export recorded
        (final.path / f"fold_{fold}" / "checkpoint_best.json").unlink()
        summary = final.path / f"fold_{fold}" / "validation" / "summary.json"
        summary.write_text(json.dumps({"checkpoint": "final", "epoch": 9, "second_look": better,
                                       "checkpoint_epochs": {"best": 9 if fold == 0 else 4, "final": 9}}))
    assert len(open_model_folder(final.path, folds=[0, 1], checkpoint="best").second_look_checks()) == 1


def test_a_ring_target_gets_no_check_its_box_prompt_outlines_the_cavity():
    from automedsam.plans import Plans

    plans = {**toy_plans(), "second_look": {"object_size": {"1": 0.3, "2": 0.05}, "reason": "test"}}
    assert checked_object_sizes(Plans(plans)) == {"2": 0.05}  # label 1 is the toy's ring around label 2


def test_the_training_check_scores_both_passes_on_the_validation_samples_shrunk(tmp_path):
    from tests.test_training import ELLIPSE, make_plans, write_preprocessed
    foundation = shared_foundation()
    plans = make_plans([ELLIPSE])
    folder = write_preprocessed(tmp_path, plans, n_samples=3, n_train=1, foundation=foundation)
    ids = ["blob001", "blob002"]
    images = [stored_image(folder, sid) for sid in ids]
    assert len(images) == 2 and images[0].shape == (96, 128) and 0 <= images[0].min() < images[0].max() <= 1
    samples = load_sample_set(folder, plans, ids, foundation)
    module = build_prompt_module(plans)
    with torch.no_grad():  # the labelled objects' mean box as the prompt, whatever the image: a loose first pass
        module.sparse_linear.weight.zero_()
        module.dense_conv.weight.zero_()
        module.dense_conv.bias.copy_(foundation.box_prompt(torch.tensor([[0.0, 0.0, 1.0, 1.0]]))[1][0, :, 0, 0])
        start_at_mean_box(module, foundation, samples.targets[1].boxes_low_res)
    checks = second_look_check({1: module}, foundation, samples, images, {"1": 0.05})
    assert set(checks) == {"1"} and checks["1"]["zoom"] == 0.5
    assert checks["1"]["per_sample"], "the trigger fires on a shrunk sample: the loop checks something"
    assert all(sample["second"] > sample["first"] for sample in checks["1"]["per_sample"]), (
        "a box too large for the shrunk object, looked at again at the labelled scale, outlines it better")
    for sample in checks["1"]["per_sample"]:
        assert sample["sample_id"] in ids
        assert all(value is None or 0.0 <= value <= 1.0 for value in (sample["first"], sample["second"]))
    assert second_look_check({1: module}, foundation, load_sample_set(folder, plans, ids, foundation), images,
                             {}) == {}, "no planned object size: nothing to check"
