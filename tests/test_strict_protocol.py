"""The strict few-shot protocol: with `--shots N`, nothing learnt from the labels comes from outside the N drawn
samples' boxes.

The proof: replace every undrawn sample's label map by random noise that holds the same labels (what the draw may
know: which samples show which structure), plan, preprocess and train again, and get the same label statistics,
plans.json and splits.json bytes and the same weights. A control changes one drawn sample's mask to show the
comparison notices a change. And the default trainer cannot reach a mask at all: with the drawn samples' masks
removed from their files it trains as before, where `fullsup`, which does read them, fails.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_raw import make_2d_masks, make_3d_ring

from automedsam.boxes import mask_to_boxes
from automedsam.errors import AutomedsamError
from automedsam.files import load_json
from automedsam.io import read_image, read_segmentation, write_image, write_segmentation
from automedsam.planning.label_statistics import STATISTICS_FILE
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.samples import sample_id, take_slice
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
    labelled = set(load_json(original / "splits.json", "splits")["labelled"])
    for case in sorted(labelled):
        path = raw / "labelsTr" / f"{case}.nii.gz"
        seg, geometry = read_segmentation(path)
        boxed = np.zeros_like(seg)
        for box in mask_to_boxes(seg == 1, per_component=True):
            boxed[box[1]:box[3] + 1, box[0]:box[2] + 1] = 1
        assert not np.array_equal(boxed, seg)
        write_segmentation(path, boxed, geometry)
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
