"""The strict few-shot protocol: with `--shots N`, nothing learnt from the labels comes from outside the N drawn
samples' boxes.

The proof: replace every undrawn sample's label map by random noise that holds the same labels (what the draw may
know: which samples show which structure), plan, preprocess and train again, and get the same label statistics,
plans.json and splits.json bytes and the same weights. A control changes one drawn sample's mask to show the
comparison notices a change. And the default trainer cannot reach a mask at all: with the drawn samples' masks
removed from their files it trains as before, where `fullsup`, which does read them, fails. The fast end-to-end
checks run every stage and every fold on TinyFoundation and compare all that training leaves behind.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_raw import disc, make_2d_masks, make_3d_ring, plane_geometry, write_dataset
from toy_model import TinyFoundation

from automedsam import plans as plans_module
from automedsam.boxes import annotator_boxes
from automedsam.errors import AutomedsamError
from automedsam.files import load_json
from automedsam.io import read_image, read_segmentation, write_image, write_segmentation
from automedsam.planning.label_statistics import STATISTICS_FILE
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.samples import case_of, sample_id, slice_of, take_slice
from automedsam.training import train_fold

SHOTS, FOLDS = 4, 2
PLANNED = ("plans.json", "splits.json")


def plan_into(preprocessed: Path, monkeypatch: pytest.MonkeyPatch, dataset: str, *, plan_only: bool = False) -> Path:
    monkeypatch.setenv("AUTOMEDSAM_PREPROCESSED", str(preprocessed))
    return plan_and_preprocess(dataset, shots=SHOTS, folds=FOLDS, seed=0, num_workers=1, device="cpu",
                               plan_only=plan_only, progress=False).out_dir


def scramble(label_map: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random noise holding exactly the labels of `label_map` (at least one pixel each), nothing of its shapes."""
    present = [int(v) for v in np.unique(label_map) if v != 0]
    if not present:
        return np.zeros_like(label_map)
    noise = rng.choice(np.asarray([0, *present], dtype=label_map.dtype), size=label_map.shape)
    flat = noise.reshape(-1)
    for index, label in zip(rng.choice(flat.size, size=len(present), replace=False), present):
        flat[index] = label
    return noise


def scramble_undrawn(raw: Path, labelled: set[str], axis: int | None) -> int:
    """Replace the label map of every sample outside `labelled` in the raw dataset; returns how many were replaced."""
    rng = np.random.default_rng(5)
    replaced = 0
    for path in sorted((raw / "labelsTr").iterdir()):
        case = path.name.split(".")[0]
        seg, geometry = read_segmentation(path)
        if axis is None:
            if case in labelled:
                continue
            seg, replaced = scramble(seg, rng), replaced + 1
        else:
            seg = seg.copy()
            for index in range(seg.shape[axis]):
                if sample_id(case, index) not in labelled:
                    view = take_slice(seg, axis, index)
                    np.moveaxis(seg, axis, 0)[index] = scramble(view, rng)
                    replaced += 1
        write_segmentation(path, seg, geometry)
    return replaced


def filled_boxes(plane: np.ndarray) -> np.ndarray:
    """Each label's annotator boxes filled, the largest label first so a smaller one inside (a ring's cavity) keeps
    its own box: the same tight boxes as `plane`, none of its shapes."""
    labels = [int(value) for value in np.unique(plane) if value != 0]
    boxes = annotator_boxes(plane, labels, per_component=True)
    areas = {label: sum((box[2] - box[0] + 1) * (box[3] - box[1] + 1) for box in boxes[label]) for label in labels}
    filled = np.zeros_like(plane)
    for label in sorted(labels, key=areas.get, reverse=True):
        for box in boxes[label]:
            filled[box[1]:box[3] + 1, box[0]:box[2] + 1] = label
    return filled


def fill_drawn_boxes(raw: Path, labelled: list[str], axis: int | None) -> None:
    """Replace each drawn sample's label map (its slice along `axis` in a volume) by `filled_boxes`, checking that
    every label keeps its boxes and that the map did change."""
    for sample in labelled:
        path = raw / "labelsTr" / f"{case_of(sample)}.nii.gz"
        seg, geometry = read_segmentation(path)
        seg = seg.copy()
        plane = seg if axis is None else np.moveaxis(seg, axis, 0)[slice_of(sample)]
        filled = filled_boxes(plane)
        labels = [int(value) for value in np.unique(plane) if value != 0]
        for per_component in (True, False):
            assert (annotator_boxes(filled, labels, per_component=per_component)
                    == annotator_boxes(plane, labels, per_component=per_component)), sample
        assert not np.array_equal(filled, plane), sample
        plane[...] = filled
        write_segmentation(path, seg, geometry)


def without_key(path: Path) -> dict:
    statistics = load_json(path, "label statistics")
    del statistics["key"]  # digests the input files' times, which the rewrite of a volume changes
    return statistics


def final_weights(results: Path) -> dict[str, torch.Tensor]:
    [checkpoint] = results.glob("*/*/fold_0/checkpoint_final.pt")
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


DATASETS = pytest.mark.parametrize("make, dataset, axis", [(make_2d_masks, "1", None), (make_3d_ring, "2", 0)],
                                   ids=["2d", "3d-declared-ring"])


@DATASETS
def test_undrawn_masks_change_nothing_that_is_planned(roots, monkeypatch, tmp_path, make, dataset, axis):
    raw = make(roots["raw"])
    original = plan_into(tmp_path / "original", monkeypatch, dataset, plan_only=True)
    labelled = set(load_json(original / "splits.json", "splits")["labelled"])
    assert scramble_undrawn(raw, labelled, axis) >= 8
    scrambled = plan_into(tmp_path / "scrambled", monkeypatch, dataset, plan_only=True)
    for name in PLANNED:
        assert (scrambled / name).read_bytes() == (original / name).read_bytes(), name
    assert without_key(scrambled / STATISTICS_FILE) == without_key(original / STATISTICS_FILE)
    plans = json.loads((original / "plans.json").read_text())
    assert plans["protocol"]["regime"] == "few_shot"
    if axis is not None:
        assert plans["targets"][1]["region"] == [2, 3], "the declared ring"

    scramble_undrawn(raw, labelled - {sorted(labelled)[0]}, axis)  # one drawn sample scrambled too
    changed = plan_into(tmp_path / "changed", monkeypatch, dataset, plan_only=True)
    assert (changed / "splits.json").read_bytes() == (original / "splits.json").read_bytes()
    assert without_key(changed / STATISTICS_FILE) != without_key(original / STATISTICS_FILE), (
        "a drawn sample's boxes are read, so scrambling its mask must show")


@pytest.mark.slow
@DATASETS
def test_undrawn_masks_change_no_trained_weight(roots, monkeypatch, tmp_path, make, dataset, axis):
    raw = make(roots["raw"])
    original = plan_into(tmp_path / "original", monkeypatch, dataset)
    labelled = set(load_json(original / "splits.json", "splits")["labelled"])
    monkeypatch.setenv("AUTOMEDSAM_RESULTS", str(tmp_path / "results_original"))
    train_fold(dataset, 0, epochs=2, device="cpu")
    scramble_undrawn(raw, labelled, axis)
    scrambled = plan_into(tmp_path / "scrambled", monkeypatch, dataset)
    assert (scrambled / "plans.json").read_bytes() == (original / "plans.json").read_bytes()
    monkeypatch.setenv("AUTOMEDSAM_RESULTS", str(tmp_path / "results_scrambled"))
    train_fold(dataset, 0, epochs=2, device="cpu")
    before, after = final_weights(tmp_path / "results_original"), final_weights(tmp_path / "results_scrambled")
    assert before.keys() == after.keys() and all(torch.equal(before[key], after[key]) for key in before)


def test_under_shots_all_every_mask_is_measured(roots, monkeypatch, tmp_path):
    make_2d_masks(roots["raw"], n_cases=8)
    monkeypatch.setenv("AUTOMEDSAM_PREPROCESSED", str(tmp_path / "all"))
    out = plan_and_preprocess("1", shots="all", folds=2, num_workers=1, plan_only=True, progress=False).out_dir
    plans = json.loads((out / "plans.json").read_text())
    statistics = load_json(out / STATISTICS_FILE, "label statistics")
    assert plans["protocol"]["regime"] == "all_labels" and statistics["shape_source"] == "masks"
    assert statistics["label_statistics"]["1"]["fill_ratio"]["count"] == 8
    assert statistics["foundation_model"] is None, "no frozen model is asked: the masks are there"


def test_the_default_trainer_never_opens_a_mask(roots):
    make_2d_masks(roots["raw"])
    out = plan_and_preprocess("1", shots=SHOTS, folds=FOLDS, num_workers=1, device="cpu", progress=False).out_dir
    for npz in (out / "samples").glob("*.npz"):
        with np.load(npz) as arrays:
            kept = {name: arrays[name] for name in arrays.files if name != "mask"}
        np.savez(npz, **kept)
    train_fold("1", 0, epochs=1, device="cpu")
    with pytest.raises(AutomedsamError, match="no readable mask"):
        train_fold("1", 1, trainer="fullsup", epochs=1, device="cpu")


def test_a_drawn_samples_mask_is_read_only_through_its_boxes(roots, monkeypatch, tmp_path):
    """The control above changes the drawn masks' boxes too; here each drawn disc becomes its filled box, the same
    boxes: a planner that read the masks' interiors (their shape, their intensities) would plan otherwise."""
    raw = make_2d_masks(roots["raw"])
    original = plan_into(tmp_path / "original", monkeypatch, "1", plan_only=True)
    fill_drawn_boxes(raw, load_json(original / "splits.json", "splits")["labelled"], None)
    boxed_plan = plan_into(tmp_path / "boxed", monkeypatch, "1", plan_only=True)
    for name in PLANNED:
        assert (boxed_plan / name).read_bytes() == (original / name).read_bytes(), name
    assert without_key(boxed_plan / STATISTICS_FILE) == without_key(original / STATISTICS_FILE)


def test_label_statistics_are_measured_again_when_the_window_from_every_image_moves(roots, monkeypatch, tmp_path):
    """The frozen model's masks of the drawn boxes are made on images normalised with the window of every image:
    with undrawn images changed, the stored statistics were reused and the same data gave other plans than a fresh
    folder."""
    raw = make_2d_masks(roots["raw"])
    first = plan_into(tmp_path / "pre", monkeypatch, "1", plan_only=True)
    labelled = set(load_json(first / "splits.json", "splits")["labelled"])
    before = load_json(first / STATISTICS_FILE, "label statistics")["key"]
    for path in sorted((raw / "imagesTr").iterdir()):
        if path.name.split("_0000")[0] not in labelled:
            pixels, geometry = read_image(path)
            write_image(path, pixels * 3 + 40, geometry)
    window = load_json(first / "plans.json", "plans")["normalization"]
    again = plan_into(tmp_path / "pre", monkeypatch, "1", plan_only=True)
    assert load_json(again / "plans.json", "plans")["normalization"] != window, "the window moved"
    assert load_json(again / STATISTICS_FILE, "label statistics")["key"] != before


def test_label_statistics_are_measured_again_when_weights_are_saved_over_the_planned_file(roots, monkeypatch,
                                                                                         tmp_path):
    """The drawn boxes' box-prompted masks come from the frozen model: a fine-tune saved over the planned weights
    file must not find the statistics the weights before it measured."""
    from automedsam.foundation.litemedsam import litemedsam_weights_path

    make_2d_masks(roots["raw"])
    weights = tmp_path / "weights" / "lite_medsam.pth"
    weights.parent.mkdir()
    shutil.copyfile(litemedsam_weights_path(), weights)
    monkeypatch.setenv("AUTOMEDSAM_PREPROCESSED", str(tmp_path / "pre"))

    def plan_only() -> dict:
        out = plan_and_preprocess("1", foundation_checkpoint=weights, shots=SHOTS, folds=FOLDS, seed=0,
                                  num_workers=1, device="cpu", plan_only=True, progress=False).out_dir
        return load_json(out / STATISTICS_FILE, "label statistics")

    first = plan_only()
    assert plan_only()["key"] == first["key"], "the same file: the stored statistics are reused"
    state = torch.load(weights, map_location="cpu", weights_only=True)
    name = next(key for key, value in state.items() if value.is_floating_point())
    state[name] = state[name] + 1e-3
    torch.save(state, weights)
    assert plan_only()["key"] != first["key"]


def make_2d_two_labels(raw_root: Path, n_cases: int = 12) -> Path:
    """2D cases (40 x 48), two per patient: a disc of label 1 on the left, a smaller one of label 2 on the right that
    every third case lacks (Dataset005_TwoDiscs)."""
    rng = np.random.default_rng(3)
    cases, groups = [], {}
    for index in range(n_cases):
        label = np.zeros((40, 48), dtype=np.uint8)
        label[disc(label.shape, (20 + rng.uniform(-3, 3), 13 + rng.uniform(-2, 2)), rng.uniform(5, 8))] = 1
        if index % 3:
            label[disc(label.shape, (20 + rng.uniform(-3, 3), 35 + rng.uniform(-2, 2)), rng.uniform(3, 5))] = 2
        image = (rng.normal(50, 10, label.shape) + 60 * label).astype(np.float32)
        case_id = f"case{index:02d}"
        groups[case_id] = f"patient{index // 2}"
        cases.append({"id": case_id, "image": image, "label": label, "geometry": plane_geometry()})
    return write_dataset(raw_root, "Dataset005_TwoDiscs", cases, {"background": 0, "big": 1, "small": 2},
                         "ultrasound", groups=groups)


@pytest.fixture
def tiny_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every foundation model the stages build is one TinyFoundation, for this test only (the module-scoped
    `tiny_foundation` would stay patched for the LiteMedSAM tests after it): every fold trains in seconds. The
    progress plot, which no comparison reads, is not drawn."""
    foundation = TinyFoundation()
    monkeypatch.setattr(plans_module, "build_foundation_model", lambda *args, **kwargs: foundation)
    monkeypatch.setattr("automedsam.training.trainer.plot_progress", lambda *args, **kwargs: None)


def plan_and_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dataset: str, tag: str) -> tuple[Path, Path]:
    """Plan, preprocess and train every fold for 2 epochs into folders of their own; returns the preprocessed
    dataset folder and the trained model folder."""
    preprocessed = plan_into(tmp_path / f"preprocessed_{tag}", monkeypatch, dataset)
    monkeypatch.setenv("AUTOMEDSAM_RESULTS", str(tmp_path / f"results_{tag}"))
    for fold in range(FOLDS):
        train_fold(dataset, fold, epochs=2, device="cpu")
    return preprocessed, tmp_path / f"results_{tag}" / preprocessed.name / "default__automedsamPlans"


TIMES = {"time_s", "time_per_epoch_s"}


def without_times(value: object) -> object:
    """A JSON value less the wall-clock times at any depth, which differ between two identical runs."""
    if isinstance(value, dict):
        return {key: without_times(item) for key, item in value.items() if key not in TIMES}
    if isinstance(value, list):
        return [without_times(item) for item in value]
    return value


def labelled_files(preprocessed: Path, labelled: list[str], folder: str, pattern: str) -> list[Path]:
    """The files of the drawn samples and of their augmentation views under `folder`, relative to `preprocessed`."""
    found = sorted(path.relative_to(preprocessed) for path in (preprocessed / folder).rglob(pattern)
                   if any(path.stem == sample or path.stem.startswith(f"{sample}__v") for sample in labelled))
    assert len(found) > len(labelled), f"every drawn sample and its views in {folder}"
    return found


def assert_same_training(first: tuple[Path, Path], second: tuple[Path, Path]) -> None:
    """plans.json, splits.json, the label statistics, the drawn samples' arrays (their masks aside) and embeddings,
    every fold's final weights, training log (times aside) and validation summary (the checks prediction's `auto`
    reads) are equal."""
    (pre_a, model_a), (pre_b, model_b) = first, second
    for name in PLANNED:
        assert (pre_b / name).read_bytes() == (pre_a / name).read_bytes(), name
    assert without_key(pre_b / STATISTICS_FILE) == without_key(pre_a / STATISTICS_FILE)
    labelled = load_json(pre_a / "splits.json", "splits")["labelled"]
    for npz in labelled_files(pre_a, labelled, "samples", "*.npz"):
        with np.load(pre_a / npz) as arrays_a, np.load(pre_b / npz) as arrays_b:
            assert arrays_a.files == arrays_b.files, npz
            for name in sorted(set(arrays_a.files) - {"mask"}):
                assert np.array_equal(arrays_a[name], arrays_b[name]), f"{npz}: {name}"
    for npy in labelled_files(pre_a, labelled, "embeddings", "*.npy"):
        assert np.array_equal(np.load(pre_a / npy), np.load(pre_b / npy)), npy
    for fold in range(FOLDS):
        fold_a, fold_b = model_a / f"fold_{fold}", model_b / f"fold_{fold}"
        before = torch.load(fold_a / "checkpoint_final.pt", map_location="cpu", weights_only=True)
        after = torch.load(fold_b / "checkpoint_final.pt", map_location="cpu", weights_only=True)
        assert before.keys() == after.keys(), fold
        assert all(torch.equal(before[key], after[key]) for key in before), f"fold {fold}: weights"
        for name in ("log.json", "validation/summary.json"):
            assert without_times(load_json(fold_b / name, name)) == without_times(load_json(fold_a / name, name)), (
                f"fold {fold}: {name}")


@pytest.mark.parametrize("make, dataset, axis", [
    (make_2d_two_labels, "5", None),
    pytest.param(make_3d_ring, "2", 0, marks=pytest.mark.slow),  # three targets to train and check in each fold
], ids=["2d-two-labels", "3d-declared-ring"])
def test_only_the_drawn_boxes_of_the_masks_reach_what_training_leaves(roots, monkeypatch, tmp_path, tiny_stages,
                                                                     make, dataset, axis):
    """Every stage and fold, run again with the undrawn samples' masks scrambled and the drawn samples' masks filled
    to their boxes, leaves all it left before but those stored masks. Both changes share one run to keep the test
    fast; the planning tests above tell them apart."""
    raw = make(roots["raw"])
    original = plan_and_train(tmp_path, monkeypatch, dataset, "original")
    labelled = load_json(original[0] / "splits.json", "splits")["labelled"]
    assert scramble_undrawn(raw, set(labelled), axis) >= 8
    fill_drawn_boxes(raw, labelled, axis)
    assert_same_training(original, plan_and_train(tmp_path, monkeypatch, dataset, "changed"))
