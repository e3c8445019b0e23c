"""Label statistics of the labelled samples: masks measured as they are under --shots all; under --shots N only
the drawn samples' boxes and the frozen model's box-prompted masks of them."""
from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic_raw import disc, make_2d_boxes, make_2d_masks, make_3d_ring, plane_geometry, write_dataset
from toy_model import shared_foundation

from automedsam.boxes import mask_to_boxes
from automedsam.dataset import load_raw_dataset
from automedsam.planning.fingerprint import run_fingerprint
from automedsam.planning.label_statistics import (measure_box_prompts, read_labelled_samples, summarise,
                                                  target_regions)
from automedsam.plans import ALL_LABELS, FEW_SHOT
from automedsam.samples import sample_id


def statistics(root, labelled=None, *, regime=ALL_LABELS, axis=None, model=False) -> dict:
    dataset = load_raw_dataset(root)
    fingerprint = run_fingerprint(dataset, progress=False)
    if labelled is None:
        labelled = [sample_id(case["case"], index) for case in fingerprint["cases"] if case["annotation"] != "none"
                    for index in (range(case["shape"][axis]) if axis is not None else [None])]
    samples = read_labelled_samples(dataset, fingerprint, labelled, axis=axis, regime=regime, progress=False)
    if model:
        measure_box_prompts(samples, shared_foundation(), normalise=lambda image: image,
                            regions=target_regions(dataset), progress=False)
    return summarise(samples, dataset, regime=regime, shots="all" if regime == ALL_LABELS else len(labelled),
                     key="test", foundation=None)


def test_all_labels_measure_every_mask(roots):
    result = statistics(make_2d_masks(roots["raw"], n_cases=12, empty_every=4))
    disc = result["label_statistics"]["1"]
    assert result["shape_source"] == "masks" and len(result["labelled_samples"]) == 12
    assert disc["presence"] == pytest.approx(9 / 12)
    assert disc["objects_per_image"]["p95"] == 1 and disc["objects_per_image"]["max"] == 1
    assert 0.7 < disc["fill_ratio"]["median"] < 0.9, "a disc fills about pi/4 of its box"
    assert disc["filled_ellipse_dice"]["median"] > 0.9
    assert 0.02 < disc["relative_size"]["median"] < 0.1
    assert result["foreground_source"] == "masks" and result["foreground_intensity"]["mean"] > 120


def test_a_declared_ring_is_measured_as_its_filled_region(roots):
    result = statistics(make_3d_ring(roots["raw"]), axis=0)
    myo, lv = result["label_statistics"]["2"], result["label_statistics"]["3"]
    assert result["declared"] == {"rings": {"2": [3]}, "shapes": {}}
    assert myo["presence"] == pytest.approx(5 / 6)
    assert myo["fill_ratio"]["median"] > 0.7, "the ring with its cavity fills its box like a disc"
    assert myo["filled_ellipse_dice"]["median"] > 0.9
    undeclared = statistics(make_3d_ring(roots["raw"], folder="Dataset009_Plain", declare_ring=False), axis=0)
    assert undeclared["label_statistics"]["2"]["fill_ratio"]["median"] < 0.6, "without the declaration: the ring"
    assert lv["fill_ratio"]["median"] == pytest.approx(undeclared["label_statistics"]["3"]["fill_ratio"]["median"])


def test_several_objects_per_image(roots):
    stats = statistics(make_2d_masks(roots["raw"], n_cases=6, blobs=2))["label_statistics"]["1"]
    assert stats["objects_per_image"]["median"] == 2 and stats["objects_per_image"]["p95"] == 2
    assert stats["fill_ratio_per_component"]["median"] > stats["fill_ratio"]["median"]


def test_boxes_under_all_labels_give_sizes_but_no_shapes(roots):
    result = statistics(make_2d_boxes(roots["raw"], n_cases=8))
    stats = result["label_statistics"]["1"]
    assert result["shape_source"] == "boxes" and stats["fill_ratio"] is None
    assert stats["presence"] == pytest.approx(6 / 8) and stats["objects_per_image"]["p95"] == 1
    assert stats["relative_size"]["median"] == pytest.approx(17 * 17 / (40 * 48), rel=0.2)
    assert result["foreground_source"] == "boxes"


def test_few_shot_opens_only_the_drawn_cases_and_reads_their_masks_as_boxes(roots):
    root = make_2d_masks(roots["raw"], n_cases=8)
    fingerprint = run_fingerprint(load_raw_dataset(root), progress=False)
    for case in ("case05", "case06", "case07"):  # undrawn: an unreadable file would fail if it were opened
        (root / "labelsTr" / f"{case}.nii.gz").write_bytes(b"not an image")
    dataset = load_raw_dataset(root, check_images=False)
    drawn = ["case01", "case02", "case03"]
    samples = read_labelled_samples(dataset, fingerprint, drawn, axis=None, regime=FEW_SHOT, progress=False)
    assert [sample.sample_id for sample in samples.samples] == drawn
    assert all(sample.image is not None and len(sample.boxes[1]) == 1 for sample in samples.samples)
    assert samples.source == "boxes" and all(not samples.tallies[1][key] for key in ("fill", "ellipse"))
    assert samples.tallies[1]["objects"] == [1, 1, 1]
    measure_box_prompts(samples, shared_foundation(), normalise=lambda image: image, regions=target_regions(dataset),
                        progress=False)
    result = summarise(samples, dataset, regime=FEW_SHOT, shots=3, key="test", foundation=None)
    disc = result["label_statistics"]["1"]
    assert result["shape_source"] == "box_prompts" and disc["fill_ratio"]["count"] == 3
    assert 0.4 < disc["fill_ratio"]["median"] < 0.95 and disc["filled_ellipse_dice"]["median"] > 0.8
    assert result["foreground_source"] == "boxes"


def test_few_shot_reads_a_declared_rings_region_through_the_enclosed_labels_prompts(roots):
    result = statistics(make_3d_ring(roots["raw"]), ["patient000_frame01__z002", "patient001_frame01__z003"],
                        regime=FEW_SHOT, axis=0, model=True)
    myo, lv = result["label_statistics"]["2"], result["label_statistics"]["3"]
    assert myo["fill_ratio"] == lv["fill_ratio"] and myo["filled_ellipse_dice"] == lv["filled_ellipse_dice"]
    assert myo["objects_per_image"]["count"] == 2
    assert np.isfinite(lv["fill_ratio"]["median"])


def test_few_shot_counts_which_box_lies_inside_which_on_the_drawn_samples_only(roots):
    """What tells a ring declared backwards (or not declared) apart: the ring's box contains its cavity's. Only the
    drawn slices count, as everything the few-shot planner learns of the labels."""
    result = statistics(make_3d_ring(roots["raw"]), ["patient000_frame01__z002", "patient001_frame01__z003",
                                                     "patient002_frame02__z000"], regime=FEW_SHOT, axis=0)
    nesting = result["box_nesting"]
    assert nesting["2"]["3"] == {"together": 2, "inside": 2}, "LV inside MYO on both drawn slices holding them"
    assert nesting["3"]["2"] == {"together": 2, "inside": 0}
    assert nesting["1"]["2"]["inside"] == nesting["2"]["1"]["inside"] == 0, "RV lies beside MYO"


def test_few_shot_reads_a_ring_around_two_labels_when_a_drawn_slice_holds_one(roots):
    """A ring declared around LV and a label the drawn slices do not hold stopped planning with KeyError."""
    root = make_3d_ring(roots["raw"])
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"]["papillary"] = 4
    meta["rings"] = {"MYO": ["LV", "papillary"]}
    (root / "dataset.json").write_text(json.dumps(meta))
    result = statistics(root, ["patient000_frame01__z002", "patient001_frame01__z003"], regime=FEW_SHOT, axis=0,
                        model=True)
    myo, lv = result["label_statistics"]["2"], result["label_statistics"]["3"]
    assert myo["fill_ratio"] == lv["fill_ratio"] and myo["objects_per_image"]["count"] == 2
    assert np.isfinite(lv["fill_ratio"]["median"]), "measured, not two missing values compared"


def test_a_speck_is_not_an_object_but_a_second_nodule_and_a_lone_dot_are(roots):
    """A one-pixel speck of a drawn mask (ACDC patient068_frame02 slice 0, THYROID ddti_105_1) counted as an
    object of its own: with 10 shots the p95 of objects per image is their maximum, so one speck made the label
    per_component, turned its largest-component clean-up off and added a prompt point to every target."""
    shape = (40, 48)
    nodule = disc(shape, (20, 16), 8)
    speck = nodule.copy()
    speck[2, 45] = speck[13, 9] = True  # one far off, one inside the nodule's box
    two = nodule | disc(shape, (20, 38), 4)  # a second nodule a quarter the size of the first
    dot = np.zeros(shape, dtype=bool)
    dot[5, 5] = True  # alone, a one-pixel object is the whole structure
    rng = np.random.default_rng(0)
    cases = [{"id": name, "image": (rng.normal(50, 10, shape) + 100 * mask).astype(np.float32),
              "label": mask.astype(np.uint8), "geometry": plane_geometry()}
             for name, mask in (("speck", speck), ("two", two), ("dot", dot))]
    root = write_dataset(roots["raw"], "Dataset020_Specks", cases, {"background": 0, "nodule": 1})
    dataset = load_raw_dataset(root)
    fingerprint = run_fingerprint(dataset, progress=False)
    drawn = read_labelled_samples(dataset, fingerprint, ["dot", "speck", "two"], axis=None, regime=FEW_SHOT,
                                  progress=False)
    assert {sample.sample_id: sample.boxes[1] for sample in drawn.samples} == {
        "speck": mask_to_boxes(nodule), "two": mask_to_boxes(two, per_component=True), "dot": [(5, 5, 5, 5)]}
    measured = statistics(root)["label_statistics"]["1"]  # --shots all: the masks themselves
    assert measured["objects_per_image"]["median"] == 1 and measured["objects_per_image"]["max"] == 2
    assert measured["fill_ratio_per_component"]["count"] == 4, "a speck in the box is no component of its own"
