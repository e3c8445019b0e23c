"""Fingerprint on small synthetic datasets: geometry, intensities, which samples hold foreground, boxes only."""
from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
from synthetic_raw import (disc, make_2d_boxes, make_2d_masks, make_3d_boxes, make_3d_ring, plane_geometry,
                           ring_volume, volume_geometry, write_dataset)

import automedsam.dataset as dataset_module
from automedsam.boxes import mask_to_boxes
from automedsam.dataset import load_raw_dataset
from automedsam.errors import AutomedsamError
from automedsam.files import save_json
from automedsam.planning.fingerprint import POOLED_PIXELS, run_fingerprint, source_key
from automedsam.planning.label_statistics import read_labelled_samples, summarise
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.planning.planner import plan, plan_slicing
from automedsam.io import Geometry, read_image, read_segmentation
from automedsam.parallel import parallel_map
from automedsam.paths import preprocessed_dataset_dir
from automedsam.plans import ALL_LABELS, FEW_SHOT


def fingerprint_of(root, num_workers: int = 1) -> dict:
    return run_fingerprint(load_raw_dataset(root), num_workers=num_workers, progress=False)


def test_2d_masks_tell_only_which_samples_hold_foreground(roots):
    fp = fingerprint_of(make_2d_masks(roots["raw"], n_cases=12, empty_every=4))
    assert fp["is_3d"] is False and fp["coarsest_axis"] is None and fp["num_cases"] == 12
    assert fp["annotation"] == {"masks": 12, "boxes": 0, "none": 0}
    first = fp["cases"][0]
    assert first["shape"] == [40, 48] and first["spacing"] == [0.5, 0.5] and first["group"] == "patient0"
    assert first["has_foreground"] is False and fp["cases"][1]["has_foreground"] is True
    assert "label_statistics" not in fp, "label statistics come from the labelled samples only"
    assert set(fp["intensity"]) == {"all"} and set(first["intensity"]) == {"all"}, "no foreground from all masks"
    assert fp["intensity"]["all"]["p0_5"] < fp["intensity"]["all"]["p99_5"]


LABELLED = ["case01", "case02", "case03"]


def planned_window(root, regime: str = FEW_SHOT) -> tuple[dict, tuple[float, float]]:
    """The fingerprint of a raw dataset and the intensity window planned from it and LABELLED's statistics."""
    dataset = load_raw_dataset(root)
    fingerprint = run_fingerprint(dataset, progress=False)
    samples = read_labelled_samples(dataset, fingerprint, LABELLED, axis=None, regime=regime, progress=False)
    statistics = summarise(samples, dataset, regime=regime, shots=len(LABELLED), key="test", foundation=None)
    normalization = plan(fingerprint, statistics)["normalization"]
    return fingerprint, (normalization["lower"], normalization["upper"])


def test_the_planned_window_of_a_non_ct_dataset_is_the_0_5_to_99_5_percentiles_of_every_pixel(roots):
    """Images under POOLED_PIXELS are pooled whole, so the numbers are exact: another percentile or another pool
    (only the labelled images, only the foreground) gives others."""
    root = make_2d_masks(roots["raw"], n_cases=6)
    images = [read_image(case.image)[0] for case in load_raw_dataset(root).cases]
    assert all(image.size < POOLED_PIXELS for image in images)
    expected = np.percentile(np.concatenate([image.reshape(-1) for image in images]).astype(np.float64), [0.5, 99.5])
    fingerprint, window = planned_window(root)
    intensity = fingerprint["intensity"]["all"]
    assert (intensity["p0_5"], intensity["p99_5"]) == pytest.approx(tuple(expected), rel=1e-12)
    assert window == pytest.approx(tuple(expected), rel=1e-12)


@pytest.mark.parametrize("regime", [FEW_SHOT, ALL_LABELS])
def test_the_planned_ct_window_is_the_0_5_to_99_5_percentiles_of_the_labelled_foreground(roots, regime):
    """CT: the pixels inside the labelled samples' tight boxes (few-shot) or masks (all labels), nothing else."""
    root = make_2d_masks(roots["raw"], n_cases=6, channel="CT")
    pixels = []
    for case_id in LABELLED:
        image = read_image(root / "imagesTr" / f"{case_id}_0000.nii.gz")[0]
        label = read_segmentation(root / "labelsTr" / f"{case_id}.nii.gz")[0] > 0  # one disc each
        rows, cols = np.nonzero(label)
        box = image[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        pixels.append(box.reshape(-1) if regime == FEW_SHOT else image[label])
    expected = np.percentile(np.concatenate(pixels).astype(np.float64), [0.5, 99.5])
    fingerprint, window = planned_window(root, regime)
    assert window == pytest.approx(tuple(expected), rel=1e-12)
    assert window[0] > fingerprint["intensity"]["all"]["p0_5"], "the foreground's window, not every pixel's"


def test_3d_foreground_slices_and_slicing_axis(roots):
    fp = fingerprint_of(make_3d_ring(roots["raw"]))
    assert fp["is_3d"] is True and fp["coarsest_axis"] == 0
    assert fp["annotated_samples"]["masks"] == 6 * 6
    assert fp["cases"][0]["foreground_slices"]["0"] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("spacing, axis, per_case", [((4.0, 1.0, 1.0), 2, 48), ((1.0, 1.0, 1.0), 0, 6),
                                                     ((1.0, 2.5, 1.0), 1, 40)])
def test_coarsest_spacing_axis_ties_to_axis_zero(roots, spacing, axis, per_case):
    fp = fingerprint_of(make_3d_ring(roots["raw"], n_cases=2, spacing=spacing))
    assert fp["coarsest_axis"] == axis
    assert fp["annotated_samples"]["masks"] == 2 * per_case


def test_a_case_sliced_otherwise_is_remeasured_along_the_dataset_axis(roots):
    rng = np.random.default_rng(0)
    cases = []
    for index, spacing in enumerate([(1.0, 1.0, 3.0)] * 3 + [(3.0, 1.0, 1.0)]):
        label = ring_volume(rng)
        cases.append({"id": f"v{index}", "image": label.astype(np.float32), "label": label,
                      "geometry": volume_geometry(spacing)})
    fp = fingerprint_of(write_dataset(roots["raw"], "Dataset008_Mixed", cases, {"background": 0, "a": 1, "b": 2,
                                                                                 "c": 3}), num_workers=2)
    assert fp["coarsest_axis"] == 0
    assert fp["annotated_samples"]["masks"] == 4 * 6, "the x-coarse case is counted along axis 0 too"


def ring_checked_axis(root, monkeypatch) -> int | None:
    """The slicing axis the load-time ring check checks a dataset's masks along."""
    seen = []
    check = dataset_module.missing_ring_labels

    def spy(gaps, *, labels, axis):
        seen.append(axis)
        return check(gaps, labels=labels, axis=axis)

    with monkeypatch.context() as patch:
        patch.setattr(dataset_module, "missing_ring_labels", spy)
        load_raw_dataset(root)
    assert len(seen) == 1, "a dataset with a declared ring and masks is ring-checked once"
    return seen[0]


@pytest.mark.parametrize("spacings, boxed_cases, interactive, axis", [
    ([(1.0, 1.0, 3.0)] * 3, 0, False, 0), ([(4.0, 1.0, 1.0)] * 3, 0, False, 2), ([(1.0, 2.5, 1.0)] * 3, 0, False, 1),
    ([(4.0, 1.0, 1.0)] * 2 + [(1.0, 1.0, 3.0)], 0, False, 2), ([(4.0, 1.0, 1.0)] * 3, 1, False, 0),
    ([(4.0, 1.0, 1.0)] * 3, 0, True, 0)],
    ids=["z-coarse", "x-coarse", "y-coarse", "median", "box-files", "interactive"])
def test_planning_slices_volumes_along_the_axis_their_masks_are_ring_checked_along(roots, monkeypatch, spacings,
                                                                                 boxed_cases, interactive, axis):
    """Loading refuses a mask lacking a declared ring on the slices planning cuts: both take the axis by one rule
    (dataset.dataset_slicing_axis), so a change to it moves both."""
    rng = np.random.default_rng(5)
    cases = []
    for index, spacing in enumerate(spacings):
        label = ring_volume(rng)
        case = {"id": f"v{index}", "image": label.astype(np.float32), "geometry": volume_geometry(spacing)}
        if index < boxed_cases:
            case["boxes"] = [{"label": 1, "box": list(box), "slice": 2} for box in mask_to_boxes(label[2] == 1)]
        else:
            case["label"] = label
        cases.append(case)
    extra = {"rings": {"MYO": ["LV"]}} | ({"annotation": "interactive"} if interactive else {})
    root = write_dataset(roots["raw"], "Dataset009_Axes", cases, {"background": 0, "RV": 1, "MYO": 2, "LV": 3},
                         extra=extra)
    planned = plan_slicing(fingerprint_of(root))["axis"]
    assert ring_checked_axis(root, monkeypatch) == planned == axis


def test_boxes_only_images(roots):
    fp = fingerprint_of(make_2d_boxes(roots["raw"], n_cases=8))
    assert fp["annotation"] == {"masks": 0, "boxes": 8, "none": 0}
    assert [case["has_foreground"] for case in fp["cases"]][-3:] == [True, False, False]


def test_boxes_only_volumes_are_indexed_along_the_first_axis(roots):
    fp = fingerprint_of(make_3d_boxes(roots["raw"], n_cases=3))
    assert fp["box_slice_axis"] == 0 and fp["annotated_samples"]["boxes"] == 3 * 2
    assert fp["cases"][0]["foreground_slices"] == {"0": [2, 4]}


def test_natural_images_take_their_spacing_from_dataset_json(roots):
    cases = [{"id": f"us{i}", "image": (disc((30, 40), (15, 20), 6) * 200).astype(np.uint8),
              "label": disc((30, 40), (15, 20), 6).astype(np.uint8), "geometry": Geometry.natural()}
             for i in range(3)]
    root = write_dataset(roots["raw"], "Dataset005_Png", cases, {"background": 0, "head": 1}, "US", ".png",
                         extra={"spacing": {"us0": [0.1, 0.1]}})
    fp = fingerprint_of(root)
    assert fp["cases"][0]["spacing"] == [0.1, 0.1] and fp["cases"][1]["spacing"] == [1.0, 1.0]


def test_a_medical_format_keeps_its_own_spacing_whatever_dataset_json_says(roots):
    """dataset.json's spacing is ignored for NIfTI (documented, and not checked on loading there): an entry that
    is no pixel size ended planning with a TypeError."""
    root = make_3d_ring(roots["raw"], n_cases=2)
    meta_path = root / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "spacing": {"patient000_frame01": 0.1}}))
    fp = fingerprint_of(root)
    assert fp["cases"][0]["spacing"] == fp["cases"][1]["spacing"]


def test_workers_give_the_same_fingerprint(roots):
    root = make_3d_ring(roots["raw"], n_cases=4)
    assert fingerprint_of(root, num_workers=2) == fingerprint_of(root, num_workers=1)


def test_source_key_follows_the_raw_files(roots):
    root = make_2d_masks(roots["raw"], n_cases=4)
    dataset = load_raw_dataset(root)
    before = source_key(dataset)
    assert source_key(load_raw_dataset(root)) == before
    others = source_key(dataset, cases={"case01", "case02"})
    image = dataset.cases[0].image
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert source_key(dataset) != before
    assert source_key(dataset, cases={"case01", "case02"}) == others, "a key over named cases ignores the rest"
    assert source_key(dataset, cases={"case00"}) != source_key(dataset, cases={"case01"})


def test_source_key_survives_moving_the_raw_root(roots, tmp_path):
    """The key named files by absolute path: moving the raw root (same files, same dates) called the fingerprint out
    of date, so --preprocess-only refused with "the raw data changed since planning"."""
    root = make_2d_masks(roots["raw"], n_cases=4)
    before = source_key(load_raw_dataset(root))
    moved = shutil.copytree(root, tmp_path / "moved_raw" / root.name, copy_function=shutil.copy2)
    assert source_key(load_raw_dataset(moved)) == before


def test_a_dangling_link_among_the_images_is_named_when_a_fingerprint_is_stored(roots):
    """The key that decides whether fingerprint.json is still current stat'ed every case file, so a link to a file
    gone ended planning with a traceback before the check of the files could name the case."""
    root = make_2d_masks(roots["raw"], n_cases=6)
    save_json(preprocessed_dataset_dir(root.name) / "fingerprint.json", fingerprint_of(root))
    link = root / "imagesTr" / "case09_0000.nii.gz"
    link.symlink_to(root / "gone.nii.gz")
    shutil.copy(root / "labelsTr" / "case00.nii.gz", root / "labelsTr" / "case09.nii.gz")
    with pytest.raises(AutomedsamError, match=rf"case09: {re.escape(str(link))} does not exist \(or is not a file\)"):
        plan_and_preprocess(root, shots=3, folds=2, num_workers=1, plan_only=True, progress=False)


def test_a_bad_case_in_a_worker_is_reported_to_the_caller(roots):
    cases = [{"id": name, "image": np.zeros((20, 20), np.float32), "label": np.zeros(shape, np.uint8),
              "geometry": plane_geometry()} for name, shape in (("good", (20, 20)), ("bad", (10, 20)))]
    root = write_dataset(roots["raw"], "Dataset006_Bad", cases, {"background": 0, "x": 1})
    with pytest.raises(AutomedsamError, match="bad.nii.gz"):
        run_fingerprint(load_raw_dataset(root, check_images=False), num_workers=2, progress=False)


def _die(_: int) -> None:
    os._exit(3)


def test_a_dead_worker_is_a_clear_error_not_a_hang():
    with pytest.raises(AutomedsamError, match="worker process died"):
        parallel_map(_die, list(range(20)), num_workers=2, description="test", progress=False)


def test_worker_count_must_be_positive():
    with pytest.raises(AutomedsamError, match="-np"):
        parallel_map(_die, [1], num_workers=0, description="test", progress=False)


def test_slices_saved_as_volumes_are_fingerprinted_as_slices(roots):
    """One-slice volumes of 1.5 mm pixels and a 1 mm slice were cut along Y: 40 images one row high each."""
    cases = []
    for index in range(4):
        label = np.zeros((1, 40, 48), np.uint8)
        label[0, 10:20, 12:30] = 1
        cases.append({"id": f"slice{index}", "image": np.random.default_rng(index).normal(size=(1, 40, 48)).astype(
            np.float32), "label": label, "geometry": volume_geometry((1.5, 1.5, 1.0))})
    root = write_dataset(roots["raw"], "Dataset007_Slices", cases, {"background": 0, "lesion": 1})
    fingerprint = run_fingerprint(load_raw_dataset(root), progress=False)
    assert fingerprint["coarsest_axis"] == 0 and fingerprint["annotated_samples"] == {"masks": 4, "boxes": 0}

