"""Preprocessing artifacts, resume and overrides, on synthetic datasets; a cheap fake encoder stands in for
LiteMedSAM except in one test that embeds two small images for real."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_raw import (disc, make_2d_boxes, make_2d_masks, make_2d_rectangles, make_3d_ring, plane_geometry,
                           rectangle_at, write_dataset)

from automedsam import plans as plans_module
from automedsam.boxes import mask_to_boxes, rasterise_boxes
from automedsam.cli import plan_and_preprocess as cli
from automedsam.conversion.acdc import convert_acdc
from automedsam.conversion.hc18 import convert_hc18
from automedsam.errors import AutomedsamError
from automedsam.io import Geometry, read_image, read_segmentation, write_image, write_segmentation
from automedsam.foundation.cache import PlannedEmbeddingCache
from automedsam.planning import preprocessing
from automedsam.planning.augmentation import transform_box, transform_image, transform_label_map, zoom_window
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.planning.planner import DEFAULT_VIEWS
from automedsam.planning.splits import make_splits
from automedsam.plans import Plans
from automedsam.training.layout import load_preprocessed
from automedsam.samples import take_slice

SAMPLE_KEYS = {"sample_id", "case", "slice", "shape", "spacing", "boxes", "has_mask", "source"}
VIEWS = 1 + len(DEFAULT_VIEWS)  # files per labelled sample: itself and its views


class FakeFoundation:
    """Encodes an image as its mean intensity broadcast to an embedding; counts builds and encoded images. Prompted
    with boxes (the few-shot label statistics), it fills each box."""

    precision = "fp32"

    def __init__(self) -> None:
        self.builds = 0
        self.encoded = 0

    def build(self, name, checkpoint, device, precision, resize):
        self.builds += 1
        return self

    def prepare(self, image2d):
        return torch.full((3, 8, 8), float(np.mean(image2d))), None

    def encode(self, images):
        self.encoded += len(images)
        return images.mean(dim=(1, 2, 3))[:, None, None, None].expand(-1, 256, 64, 64).clone()

    def segment_boxes(self, image2d, boxes):
        return np.stack([rasterise_boxes([box], image2d.shape[:2]) for box in boxes])


@pytest.fixture
def fake(monkeypatch):
    foundation = FakeFoundation()
    monkeypatch.setattr(plans_module, "build_foundation_model", foundation.build)
    return foundation


def folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def with_views(sample_ids) -> list[str]:
    """The sample ids preprocessing writes for these labelled samples: each one and its views."""
    return sorted([*sample_ids, *(f"{sid}__{view['name']}" for sid in sample_ids for view in DEFAULT_VIEWS)])


def stored_samples(out: Path) -> dict[str, dict]:
    """sample id -> json of every sample preprocessing wrote that is not a view."""
    metas = {path.stem: json.loads(path.read_text()) for path in (out / "samples").glob("*.json")}
    return {sid: meta for sid, meta in metas.items() if "view" not in meta}


def run(dataset, **options):
    options.setdefault("num_workers", 1)
    return plan_and_preprocess(dataset, progress=False, **options)


def moved_windows(before: dict[str, dict], after: dict[str, dict]) -> list[str]:
    """The zoomed views (of the samples of `after`) whose window moved between two sets of sample records."""
    def window(meta: dict, view: dict) -> tuple[float, ...] | None:
        return zoom_window(meta["shape"], [entry["box"] for entry in meta["boxes"]], view)

    return sorted(f"{sid}__{view['name']}" for sid, meta in after.items() for view in DEFAULT_VIEWS
                  if window(before[sid], view) != window(meta, view))


def changed_embeddings(out: Path, before: dict[str, tuple[int, int]]) -> set[str]:
    """The samples and views whose embedding (or its image digest) was written since `before`
    (`folder_state(out / "embeddings")`)."""
    return {Path(key).stem for key, value in folder_state(out / "embeddings").items() if before.get(key) != value}


def assert_embeddings_show_the_stored_pixels(out: Path) -> None:
    """Every stored embedding is of the pixels its sample or view holds now: the fake encoder's is the image's mean,
    which a zoom changes."""
    for path in (out / "embeddings" / "litemedsam").glob("*.npy"):
        with np.load(out / "samples" / f"{path.stem}.npz", allow_pickle=False) as arrays:
            shown = float(np.mean(arrays["image"]))
        assert float(np.load(path)[0, 0, 0]) == pytest.approx(shown, abs=1e-3), path.stem


def test_ring_volumes_end_to_end(roots, fake):
    raw = make_3d_ring(roots["raw"])
    raw_before = folder_state(raw)
    summary = run("2", shots=4, num_workers=2)
    out = roots["preprocessed"] / "Dataset002_Heart"
    assert summary.out_dir == out and not summary.fingerprint_reused and summary.labelled == 4
    assert (out / "dataset.json").read_bytes() == (raw / "dataset.json").read_bytes()
    plans = json.loads((out / "plans.json").read_text())
    splits = json.loads((out / "splits.json").read_text())
    assert json.loads((out / "fingerprint.json").read_text())["coarsest_axis"] == 0
    myo = next(target for target in plans["targets"] if target["label"] == 2)
    assert myo["region"] == [2, 3] and myo["subtract"] == [3]
    labelled = splits["labelled"]
    assert len(labelled) == 4
    assert sorted(stored_samples(out)) == labelled
    assert sorted(p.stem for p in (out / "samples").glob("*.json")) == with_views(labelled)
    assert sorted(p.stem for p in (out / "samples").glob("*.npz")) == with_views(labelled)
    assert sorted(p.stem for p in (out / "embeddings" / "litemedsam").glob("*.npy")) == with_views(labelled)
    assert fake.builds == 1 and fake.encoded == 4 * VIEWS
    for sid in labelled:
        meta = json.loads((out / "samples" / f"{sid}.json").read_text())
        assert set(meta) == SAMPLE_KEYS and meta["sample_id"] == sid and meta["has_mask"] is True
        case = meta["case"]
        assert sid == f"{case}__z{meta['slice']:03d}" and meta["shape"] == [40, 48] and meta["spacing"] == [1.0, 1.0]
        image, _ = read_image(raw / "imagesTr" / f"{case}_0000.nii.gz")
        label, _ = read_segmentation(raw / "labelsTr" / f"{case}.nii.gz")
        with np.load(out / "samples" / f"{sid}.npz", allow_pickle=False) as arrays:
            assert arrays["image"].dtype == np.float32 and arrays["mask"].dtype == np.uint8
            np.testing.assert_allclose(arrays["image"], Plans(plans).normalise(take_slice(image, 0, meta["slice"])))
            np.testing.assert_array_equal(arrays["mask"], label[meta["slice"]])
        expected = [{"label": value, "box": list(box)} for value in (1, 2, 3)
                    for box in mask_to_boxes(label[meta["slice"]] == value)]
        assert meta["boxes"] == expected, "ring box = box of the ring itself"
        embedding = np.load(out / "embeddings" / "litemedsam" / f"{sid}.npy", allow_pickle=False)
        assert embedding.dtype == np.float16 and embedding.shape == (256, 64, 64)
    assert folder_state(raw) == raw_before, "raw/ must never be written"


def test_a_ring_declared_backwards_is_refused_before_the_frozen_model_and_an_undeclared_one_noted(roots, fake):
    """Planned as declared, `{"LV": ["MYO"]}` trained the cavity as the myocardium's region and the myocardium as
    nearly nothing, without a word; an nnU-Net dataset without rings trained the myocardium as its thin pixels."""
    root = make_3d_ring(roots["raw"])
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps(meta | {"rings": {"LV": ["MYO"]}}))
    with pytest.raises(AutomedsamError, match=r"declares LV a ring around MYO, but on 4 of the 4 labelled samples "
                                              r"holding both, LV's box lies inside MYO's.*Did you mean \"rings\": "
                                              r"\{\"MYO\": \[\"LV\"\]\}\?"):
        run("2", shots=4, plan_only=True)
    assert fake.builds == 0, "refused before the frozen model is asked about the boxes"
    (root / "dataset.json").write_text(json.dumps(meta))
    assert not [note for note in run("2", shots=4, plan_only=True).notes if "ring" in note]
    (root / "dataset.json").write_text(json.dumps({key: value for key, value in meta.items() if key != "rings"}))
    notes = [note for note in run("2", shots=4, plan_only=True).notes if "ring" in note]
    assert len(notes) == 1 and notes[0].startswith("LV's box lies inside MYO's on 4 of the 4 labelled samples")
    assert 'declare "rings": {"MYO": ["LV"]}' in notes[0]


def test_rerun_recomputes_nothing_and_an_interrupted_run_resumes(roots, fake):
    make_3d_ring(roots["raw"])
    run("2", shots=4)
    out = roots["preprocessed"] / "Dataset002_Heart"
    before = folder_state(out)
    again = run("2", shots=4)
    assert again.fingerprint_reused and again.preprocessing["samples_written"] == 0
    assert again.preprocessing["embeddings_computed"] == 0 and fake.builds == 1
    changed = {key for key, value in folder_state(out).items() if before.get(key) != value}
    assert changed <= {"plans.json", "splits.json", "preprocessing_state.json"}, changed
    victim = json.loads((out / "splits.json").read_text())["labelled"][1]
    (out / "samples" / f"{victim}.json").unlink()
    (out / "embeddings" / "litemedsam" / f"{victim}.npy").unlink()
    resumed = run("2", shots=4)
    assert resumed.preprocessing["samples_written"] == 1 and resumed.preprocessing["embeddings_computed"] == 1
    assert (out / "samples" / f"{victim}.json").is_file()


def test_plan_only_again_keeps_the_precision_preprocessing_chose(roots, fake):
    """--plan-only rewrote plans.json without preprocessing's precision_check: trained folds then refused the next
    fold ("trained with other plans"), and the advice given moved the whole model aside."""
    make_3d_ring(roots["raw"])
    run("2", shots=4)
    plans_path = roots["preprocessed"] / "Dataset002_Heart" / "plans.json"
    planned = json.loads(plans_path.read_text())
    assert "precision_check" in planned["foundation_model"]
    run("2", shots=4, plan_only=True)
    assert json.loads(plans_path.read_text()) == planned
    plans_path.write_text(json.dumps({**planned, "training": {**planned["training"], "reason": "older words"}}))
    run("2", shots=4, plan_only=True)  # the same plans in other words (an upgrade): the measured precision stays
    assert json.loads(plans_path.read_text()) == planned
    run("2", shots=4, seed=1, plan_only=True)  # another draw: the plans are new, their precision not yet chosen
    assert "precision_check" not in json.loads(plans_path.read_text())["foundation_model"]
    run("2", shots=4, precision="bf16")
    run("2", shots=4, plan_only=True, precision="fp32")  # asked for: the stored bf16 is not kept
    assert json.loads(plans_path.read_text())["foundation_model"]["precision"] == "fp32"
    run("2", shots=4, plan_only=True, precision="bf16")  # recorded as given, no longer written as fp32
    section = json.loads(plans_path.read_text())["foundation_model"]
    assert section["precision"] == "bf16" and section["precision_check"]["reason"] == "--precision bf16 given: no check"


def test_views_of_the_labelled_samples_move_pixels_masks_and_boxes_together(roots, fake):
    make_3d_ring(roots["raw"])
    summary = run("2", shots=4, embed_all=True)
    out = summary.out_dir
    labelled = json.loads((out / "splits.json").read_text())["labelled"]
    views = {path.stem: json.loads(path.read_text()) for path in (out / "samples").glob("*__v*.json")}
    assert sorted(views) == sorted(set(with_views(labelled)) - set(labelled)), "views of labelled samples only"
    assert summary.preprocessing["views"] == len(views) == 4 * len(DEFAULT_VIEWS)
    for vid, meta in views.items():
        source = json.loads((out / "samples" / f"{meta['source_sample']}.json").read_text())
        view = meta["view"]
        assert set(meta) == SAMPLE_KEYS | {"source_sample", "view"} and vid == f"{source['sample_id']}__{view['name']}"
        assert (meta["case"], meta["slice"], meta["has_mask"]) == (source["case"], source["slice"], True)
        assert meta["shape"] == ([48, 40] if view["rot90"] % 2 else [40, 48])
        window = zoom_window(source["shape"], [entry["box"] for entry in source["boxes"]], view)
        with np.load(out / "samples" / f"{vid}.npz") as moved, \
                np.load(out / "samples" / f"{source['sample_id']}.npz") as own:
            np.testing.assert_array_equal(moved["image"], transform_image(own["image"], view, window))
            np.testing.assert_array_equal(moved["mask"], transform_label_map(own["mask"], view, window))
            mask = moved["mask"]
        assert meta["boxes"] == [{"label": entry["label"], "box": transform_box(entry["box"], source["shape"], view,
                                                                                window)}
                                 for entry in source["boxes"]]
        mask_boxes = [{"label": value, "box": list(box)} for value in (1, 2, 3) for box in mask_to_boxes(mask == value)]
        if view["scale"] == 1:
            assert meta["boxes"] == mask_boxes, "the boxes of the moved mask"
        else:  # a zoom out may skip a one-pixel row or column at the edge of a structure
            assert [entry["label"] for entry in meta["boxes"]] == [entry["label"] for entry in mask_boxes]
            for entry, from_mask in zip(meta["boxes"], mask_boxes):
                inner = np.subtract(from_mask["box"], entry["box"]) * [1, 1, -1, -1]
                assert inner.min() >= 0 and inner.max() <= 1, (vid, entry, from_mask)
    assert fake.encoded == 36 + len(views)
    before = folder_state(out)
    again = run("2", shots=4, embed_all=True)
    assert again.preprocessing["samples_written"] == 0 and again.preprocessing["embeddings_computed"] == 0
    assert fake.builds == 1 and fake.encoded == 36 + len(views)
    changed = {key for key, value in folder_state(out).items() if before.get(key) != value}
    assert changed <= {"plans.json", "splits.json", "preprocessing_state.json"}, changed


def test_an_edited_view_is_redone_alone_and_plans_without_views_clear_them(roots, fake):
    make_3d_ring(roots["raw"])
    out = run("2", shots=4).out_dir
    plans = json.loads((out / "plans.json").read_text())
    plans["augmentation"]["views"] = [view for view in plans["augmentation"]["views"] if view["name"] != "v07"]
    plans["augmentation"]["views"][1]["gamma"] = 1.5  # v02
    (out / "plans.json").write_text(json.dumps(plans))
    before = folder_state(out)
    summary = run("2", preprocess_only=True)
    assert summary.preprocessing["samples_written"] == 4 and summary.preprocessing["embeddings_computed"] == 4
    assert any("v02, v07" in note for note in summary.notes)
    after = folder_state(out)
    assert not any("__v07." in key for key in after)
    changed = {key for key, value in after.items() if before.get(key) != value}
    assert changed - {"preprocessing_state.json"} == {key for key in after if "__v02." in key}
    del plans["augmentation"]
    (out / "plans.json").write_text(json.dumps(plans))
    bare = run("2", preprocess_only=True)
    assert bare.preprocessing["embeddings_computed"] == 0 and bare.preprocessing["views"] == 0
    assert not any("__v" in key for key in folder_state(out))


def test_new_seed_redraws_and_reuses_the_embeddings_it_can(roots, fake):
    make_3d_ring(roots["raw"])
    splits_path = roots["preprocessed"] / "Dataset002_Heart" / "splits.json"
    run("2", shots=4, seed=0)
    first = set(json.loads(splits_path.read_text())["labelled"])
    summary = run("2", shots=4, seed=5)
    second = set(json.loads(splits_path.read_text())["labelled"])
    assert second != first
    assert summary.preprocessing["embeddings_computed"] == len(second - first) * VIEWS
    assert sorted(stored_samples(summary.out_dir)) == sorted(second)


def test_embed_all_writes_unlabelled_samples_without_boxes(roots, fake):
    make_3d_ring(roots["raw"])
    summary = run("2", shots=4, embed_all=True)
    labelled = set(json.loads((summary.out_dir / "splits.json").read_text())["labelled"])
    metas = stored_samples(summary.out_dir).values()
    assert len(metas) == 6 * 6 and fake.encoded == 36 + 4 * len(DEFAULT_VIEWS), "views of labelled samples only"
    for meta in metas:
        assert bool(meta["boxes"]) == (meta["sample_id"] in labelled)
    assert len(list((summary.out_dir / "samples").glob("*.json"))) == 36 + 4 * len(DEFAULT_VIEWS)


def test_edited_plans_are_applied_with_preprocess_only(roots, fake):
    make_3d_ring(roots["raw"])
    run("2", shots=4)
    out = roots["preprocessed"] / "Dataset002_Heart"
    plans = json.loads((out / "plans.json").read_text())
    plans["training"]["reason"] = "edited by hand"
    (out / "plans.json").write_text(json.dumps(plans))
    untouched = run("2", preprocess_only=True)
    assert untouched.preprocessing["samples_written"] == 0, "reasons and training do not affect samples"
    plans["normalization"].update(lower=0.0, upper=2.0)
    (out / "plans.json").write_text(json.dumps(plans))
    summary = run("2", preprocess_only=True)
    assert summary.preprocessing["samples_written"] == 4 * VIEWS
    assert summary.preprocessing["embeddings_computed"] == 4 * VIEWS
    assert any("normalisation" in note for note in summary.notes)
    sid = json.loads((out / "splits.json").read_text())["labelled"][0]
    with np.load(out / "samples" / f"{sid}.npz", allow_pickle=False) as arrays:
        assert arrays["image"].max() <= 0.6, "the edited window [0, 2] halves intensities near 1"
    assert json.loads((out / "plans.json").read_text())["normalization"]["upper"] == 2.0


def test_hand_chosen_samples_are_warned_of_plans_learnt_from_others(roots, fake):
    """--preprocess-only after choosing the labelled samples by hand kept plans learnt from the drawn ones, silently."""
    make_3d_ring(roots["raw"])
    run("2", shots=4)
    out = roots["preprocessed"] / "Dataset002_Heart"
    assert not [note for note in run("2", preprocess_only=True).notes if "learnt from other" in note]
    splits = json.loads((out / "splits.json").read_text())
    first = splits["labelled"][0]
    chosen = next(f"{case}__z002" for case in ("patient002_frame01", "patient002_frame02", "patient001_frame02")
                  if f"{case}__z002" not in splits["labelled"])
    splits["labelled"] = [chosen if sid == first else sid for sid in splits["labelled"]]
    for fold in splits["folds"]:
        for part in ("train", "val"):
            fold[part] = [chosen if sid == first else sid for sid in fold[part]]
    (out / "splits.json").write_text(json.dumps(splits))
    notes = run("2", preprocess_only=True).notes
    assert any(note.startswith("plans.json's box margins") and "learnt from other" in note for note in notes)


def test_edited_targets_encode_again_only_the_zoomed_views_whose_window_moved(roots, fake):
    """A zoomed view is a window around its sample's boxes: a target left out moves the windows that framed its
    boxes, and those views are encoded again. The flips and turns show the pixels they showed, yet every view of
    every labelled sample was encoded again (90 encoder passes for 10 labelled samples)."""
    make_3d_ring(roots["raw"])
    out = run("2", shots=4).out_dir
    records, embeddings = stored_samples(out), folder_state(out / "embeddings")
    plans = json.loads((out / "plans.json").read_text())
    plans["targets"] = [target for target in plans["targets"] if target["label"] != 1]
    (out / "plans.json").write_text(json.dumps(plans))
    summary = run("2", preprocess_only=True)
    moved = moved_windows(records, stored_samples(out))
    assert moved and summary.preprocessing["embeddings_computed"] == len(moved)
    assert changed_embeddings(out, embeddings) == set(moved)
    assert summary.preprocessing["samples_written"] == 4 * VIEWS, "the boxes moved: every sample and view is rewritten"
    assert_embeddings_show_the_stored_pixels(out)


def test_targets_edited_without_moving_a_box_encode_nothing_again(roots, fake):
    """A label renamed or a target's pseudo-label changed rewrites the samples (their plans changed) but moves no
    pixel: every view of every labelled sample was encoded again."""
    make_2d_masks(roots["raw"], n_cases=6)
    out = run("1", shots=3).out_dir
    records, embeddings, encoded = stored_samples(out), folder_state(out / "embeddings"), fake.encoded
    plans = json.loads((out / "plans.json").read_text())
    target = plans["targets"][0]
    target["name"] = "renamed"
    target["pseudo_label"] = "box_prompt" if target["pseudo_label"] == "inscribed_ellipse" else "inscribed_ellipse"
    (out / "plans.json").write_text(json.dumps(plans))
    summary = run("1", preprocess_only=True)
    assert summary.preprocessing["samples_written"] == 3 * VIEWS, "samples and views are written under the new plans"
    assert stored_samples(out) == records
    assert summary.preprocessing["embeddings_computed"] == 0 and fake.encoded == encoded
    assert changed_embeddings(out, embeddings) == set()
    load_preprocessed("Dataset001_Discs")


def test_edited_slicing_axis_redraws_the_splits(roots, fake):
    make_3d_ring(roots["raw"], spacing=(4.0, 2.0, 3.0))
    summary = run("2", shots=4)
    plans = json.loads((summary.out_dir / "plans.json").read_text())
    assert plans["slicing"]["axis"] == 2
    meta = next(iter(stored_samples(summary.out_dir).values()))
    assert meta["shape"] == [6, 40] and meta["spacing"] == [2.0, 3.0]
    plans["slicing"]["axis"] = 0
    (summary.out_dir / "plans.json").write_text(json.dumps(plans))
    redone = run("2", preprocess_only=True)
    splits = json.loads((summary.out_dir / "splits.json").read_text())
    assert splits["slicing_axis"] == 0 and any("redrawn" in note for note in redone.notes)
    assert json.loads((summary.out_dir / "samples" / f"{splits['labelled'][0]}.json").read_text())["shape"] == [40, 48]


def test_preprocess_only_options_and_missing_plans_are_clear_errors(roots, fake):
    make_2d_masks(roots["raw"], n_cases=6)
    with pytest.raises(AutomedsamError, match="without --preprocess-only"):
        run("1", preprocess_only=True)
    run("1", shots=4, plan_only=True)
    assert not (roots["preprocessed"] / "Dataset001_Discs" / "samples").exists() and fake.encoded == 0
    assert fake.builds == 1, "planning asks the frozen model about the drawn boxes (label statistics), nothing more"
    with pytest.raises(AutomedsamError, match="--shots"):
        run("1", preprocess_only=True, shots=3)
    with pytest.raises(AutomedsamError, match="exclude each other"):
        run("1", plan_only=True, preprocess_only=True)


def test_preprocess_only_after_a_raw_change_says_what_planning_again_replaces(roots, fake):
    """The refusal said only to run without the flag, which writes over a hand-edited plans.json and splits.json."""
    root = make_2d_masks(roots["raw"], n_cases=6)
    run("1", shots=4, plan_only=True)
    touched(root / "labelsTr" / "case00.nii.gz")
    with pytest.raises(AutomedsamError, match="out of date: the raw data changed") as refused:
        run("1", preprocess_only=True)
    assert "replaces plans.json and splits.json, so hand edits made to them are lost" in str(refused.value)


def test_batch_and_views_reason_follow_the_smallest_fold_the_groups_give(roots, fake):
    """Folds are cut by patient: 6 + 2 samples make two folds, one training on 2 samples. The plans took five
    equal folds (6 samples each), so batch 4 and a reason saying 6."""
    make_2d_masks(roots["raw"], n_cases=8, per_group=6)
    run("1", shots=8, plan_only=True)
    out = roots["preprocessed"] / "Dataset001_Discs"
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(len(fold["train"]) for fold in splits["folds"]) == [2, 6]
    plans = json.loads((out / "plans.json").read_text())
    training = plans["training"]
    assert training["batch_size"] == 2 and "smallest fold trains on only 2 samples" in training["reason"]
    assert "smallest fold trains on 2 samples" in plans["augmentation"]["reason"]


def test_boxes_only_dataset_keeps_the_given_boxes(roots, fake):
    root = make_2d_boxes(roots["raw"], n_cases=8)
    summary = run("3", shots=4)
    for meta_path in (summary.out_dir / "samples").glob("*.json"):
        meta = json.loads(meta_path.read_text())
        given = json.loads((root / "boxesTr" / f"{meta['case']}.json").read_text())
        if "view" in meta:
            view = meta["view"]
            window = zoom_window([40, 48], [entry["box"] for entry in given], view)
            given = [{"label": 1, "box": transform_box(entry["box"], [40, 48], view, window)} for entry in given]
        assert meta["boxes"] == given and meta["has_mask"] is False and meta["slice"] is None
        with np.load(meta_path.with_suffix(".npz"), allow_pickle=False) as arrays:
            assert set(arrays.files) == {"image"}
    assert summary.preprocessing["views"] == 4 * len(DEFAULT_VIEWS)
    plans = json.loads((summary.out_dir / "plans.json").read_text())
    assert plans["normalization"]["scheme"] == "ct_foreground_window"


def touched(path: Path) -> None:
    """A later modification time than anything written so far, whatever the file system's clock resolution."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_a_corrected_mask_rewrites_its_sample_and_views_and_encodes_only_the_moved_zoom(roots, fake):
    """A corrected mask moves boxes, not pixels: the views' masks and boxes are rewritten, and only a zoom whose
    window follows the boxes is encoded again (its flips and turns were encoded again too)."""
    root = make_2d_masks(roots["raw"], n_cases=6)
    summary = run("1", shots=3)
    out, labelled = summary.out_dir, json.loads((summary.out_dir / "splits.json").read_text())["labelled"]
    for record in (out / "samples").glob("*.json"):  # samples written before they recorded their source
        meta = json.loads(record.read_text())
        meta.pop("source")
        record.write_text(json.dumps(meta))
    encoded = fake.encoded
    assert run("1", shots=3).preprocessing["samples_written"] == 0 and fake.encoded == encoded  # nothing newer
    corrected, mask_file = labelled[0], root / "labelsTr" / f"{labelled[0]}.nii.gz"
    mask, geometry = read_segmentation(mask_file)
    moved = np.roll(mask, 10, axis=1)  # far enough from the edge for the zoom in to follow it
    write_segmentation(mask_file, moved, geometry)
    touched(mask_file)
    records, embeddings = stored_samples(out), folder_state(out / "embeddings")
    again = run("1", shots=3)
    expected = [{"label": 1, "box": list(box)} for box in mask_to_boxes(moved == 1)]
    assert stored_samples(out)[corrected]["boxes"] == expected
    reframed = moved_windows(records, stored_samples(out))
    assert reframed == [f"{corrected}__v09"], "the zoom in follows the box; the zoom out, flips and turns do not"
    assert fake.encoded == encoded + 1 and changed_embeddings(out, embeddings) == set(reframed)
    assert_embeddings_show_the_stored_pixels(out)
    assert "1 sample(s) written again: their image, mask or box file changed since" in again.preprocessing["notes"]
    for view in DEFAULT_VIEWS:
        meta = json.loads((out / "samples" / f"{corrected}__{view['name']}.json").read_text())
        window = zoom_window([40, 48], [entry["box"] for entry in expected], view)
        assert meta["boxes"] == [{"label": 1, "box": transform_box(entry["box"], [40, 48], view, window)}
                                 for entry in expected]


def test_a_box_corrected_while_its_sample_is_out_of_the_draw_gets_zoomed_views_encoded_again(roots, fake):
    """samples/ is cleared whenever the labelled set changes but the views' embeddings are kept: a box corrected
    while its sample was not drawn paired the new boxes with the embedding of the old zoomed crop."""
    root = make_2d_rectangles(roots["raw"])
    draws = {seed: json.loads((run("1", shots=2, seed=seed).out_dir / "splits.json").read_text())["labelled"]
             for seed in range(8)}
    corrected = draws[0][0]
    other = next(seed for seed, labelled in draws.items() if corrected not in labelled)
    run("1", shots=2, seed=other)
    mask_file = root / "labelsTr" / f"{corrected}.nii.gz"
    write_segmentation(mask_file, rectangle_at(55, 40), plane_geometry())
    touched(mask_file)
    encoded = fake.encoded
    out = run("1", shots=2, seed=0).out_dir
    zoomed = [view for view in DEFAULT_VIEWS if view["scale"] > 1]
    assert zoomed and fake.encoded == encoded + len(zoomed), "only the crops centred on the moved box are new"
    for view in zoomed:
        vid = f"{corrected}__{view['name']}"
        with np.load(out / "samples" / f"{vid}.npz", allow_pickle=False) as arrays:
            shown = float(np.mean(arrays["image"]))
        embedded = float(np.load(out / "embeddings" / "litemedsam" / f"{vid}.npy")[0, 0, 0])
        assert embedded == pytest.approx(shown, abs=1e-3), "the embedding is of the crop the view holds now"


def test_training_refuses_samples_made_under_plans_planned_again_without_preprocessing(roots, fake):
    """A --plan-only replan (here another draw) left samples/ and embeddings of the old plans, which training used
    under the new plans.json."""
    make_2d_masks(roots["raw"], n_cases=8)
    run("1", shots=4)
    load_preprocessed("Dataset001_Discs")
    run("1", shots=4, seed=3, plan_only=True)
    with pytest.raises(AutomedsamError, match="--preprocess-only to bring them up to date"):
        load_preprocessed("Dataset001_Discs")
    run("1", preprocess_only=True)
    load_preprocessed("Dataset001_Discs")


def test_the_same_draw_under_another_shots_is_recorded_under_it(roots, fake):
    """Four boxed samples are labelled by --shots 4 and 6 alike: the label statistics were reused with the shots
    of the first run, and plans.json quoted them."""
    make_2d_boxes(roots["raw"], n_cases=6)
    for shots in (4, 6):
        out = run("3", shots=shots, plan_only=True).out_dir
        assert json.loads((out / "splits.json").read_text())["shots"] == shots
        assert json.loads((out / "plans.json").read_text())["protocol"]["shots"] == shots


def test_a_box_file_saved_again_with_the_same_boxes_redoes_nothing(roots, fake):
    """A volume's box file changes whenever a box is drawn on any of its slices: its other samples stay as they are."""
    root = make_2d_boxes(roots["raw"], n_cases=8)
    summary = run("3", shots=4)
    labelled = json.loads((summary.out_dir / "splits.json").read_text())["labelled"]
    encoded, box_file = fake.encoded, root / "boxesTr" / f"{labelled[0]}.json"
    box_file.write_text(json.dumps(json.loads(box_file.read_text()), indent=2))
    touched(box_file)
    again = run("3", shots=4)
    assert again.preprocessing["samples_written"] == 0 and fake.encoded == encoded
    assert not any("written again" in note for note in again.preprocessing["notes"])


def test_an_image_imported_again_is_encoded_again(roots, fake):
    root = make_2d_masks(roots["raw"], n_cases=6)
    summary = run("1", shots=3)
    out, labelled = summary.out_dir, json.loads((summary.out_dir / "splits.json").read_text())["labelled"]
    encoded, image_file = fake.encoded, root / "imagesTr" / f"{labelled[0]}_0000.nii.gz"
    pixels, geometry = read_image(image_file)
    write_image(image_file, np.ascontiguousarray(pixels[:, ::-1]), geometry)  # the same intensities: same window
    touched(image_file)
    run("1", shots=3)
    assert fake.encoded == encoded + VIEWS  # the sample and its views
    with np.load(out / "samples" / f"{labelled[0]}.npz", allow_pickle=False) as arrays:
        stored = arrays["image"]
    plans = Plans.load(out / "plans.json")
    np.testing.assert_allclose(stored, plans.normalise(read_image(image_file)[0]))


def test_an_image_replaced_by_an_older_dated_file_is_not_served_its_old_embedding(roots, fake):
    """Readers of the cache (Segment images, the review, the preview) told an embedding's image by time alone: an
    image replaced by an older-dated file (cp -p, rsync -a) was no newer than the embedding, which was served for
    the new pixels. Each embedding now keeps the digest of the image its sample was read from."""
    root = make_2d_masks(roots["raw"], n_cases=6)
    summary = run("1", shots=3)
    out, labelled = summary.out_dir, json.loads((summary.out_dir / "splits.json").read_text())["labelled"]
    plans, image_file = Plans.load(out / "plans.json"), root / "imagesTr" / f"{labelled[0]}_0000.nii.gz"
    source = stored_samples(out)[labelled[0]]["source"]["image"]
    stamps = out / "embeddings" / plans.foundation_name
    assert {sid: (stamps / f"{sid}.image").read_text() for sid in with_views([labelled[0]])} == {
        sid: source for sid in with_views([labelled[0]])}, "a view keeps its sample's image digest"
    cache = PlannedEmbeddingCache(out, plans, images={labelled[0]: image_file})
    assert cache.get(labelled[0]) is not None
    dated = image_file.stat()
    pixels, geometry = read_image(image_file)
    write_image(image_file, np.ascontiguousarray(pixels[:, ::-1]), geometry)
    os.utime(image_file, ns=(dated.st_atime_ns, dated.st_mtime_ns - 10**9))  # older than the embedding
    assert cache.get(labelled[0]) is None


def test_several_objects_get_one_box_per_component(roots, fake):
    make_2d_masks(roots["raw"], n_cases=6, blobs=2)
    summary = run("1", shots=3)
    plans = json.loads((summary.out_dir / "plans.json").read_text())
    assert plans["targets"][0]["per_component"] is True
    for meta_path in (summary.out_dir / "samples").glob("*.json"):
        assert len(json.loads(meta_path.read_text())["boxes"]) == 2


def test_label_ids_above_255_are_kept_in_the_samples_masks(roots, fake):
    """A label 300 passed loading but was refused in preprocessing, when a drawn sample held it (the sample's mask
    was stored as uint8); a case without such a label keeps its uint8 mask, as samples written before hold it."""
    cases = []
    for index in range(6):
        label = np.zeros((40, 48), dtype=np.uint16)
        label[disc(label.shape, (12, 12), 5)] = 1
        if index != 5:
            label[disc(label.shape, (26, 34), 6)] = 300
        image = (40 + 100 * (label == 1) + 180 * (label == 300)).astype(np.uint8)
        cases.append({"id": f"case{index}", "image": image, "label": label, "geometry": Geometry.natural()})
    write_dataset(roots["raw"], "Dataset003_Big", cases, {"background": 0, "a": 1, "big": 300}, file_ending=".png")
    out = run("3", shots="all").out_dir
    for path in sorted((out / "samples").glob("*.npz")):
        meta = json.loads(path.with_suffix(".json").read_text())
        with np.load(path, allow_pickle=False) as arrays:
            mask = arrays["mask"]
        if meta["case"] == "case5":
            assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
        else:
            assert mask.dtype == np.uint16 and set(np.unique(mask)) == {0, 1, 300}, path.name
            assert {entry["label"] for entry in meta["boxes"]} == {1, 300}, path.name


def test_a_speck_in_a_drawn_mask_changes_neither_the_plans_nor_the_boxes(roots, fake):
    """One stray MYO pixel on a drawn slice made MYO per_component (with 10 shots the p95 of objects per image is
    their maximum), turned its largest-component clean-up off, gave every target 2 prompt points and the speck a
    1x1 box of its own."""
    root = make_3d_ring(roots["raw"], n_cases=12)
    out = run("2", shots=10).out_dir
    sections = ("targets", "postprocessing", "prompt_module")
    planned = {key: json.loads((out / "plans.json").read_text())[key] for key in sections}
    sid = json.loads((out / "splits.json").read_text())["labelled"][0]
    case, index = sid.split("__z")
    mask_file = root / "labelsTr" / f"{case}.nii.gz"
    label, geometry = read_segmentation(mask_file)
    specked = label.copy()
    specked[int(index), 0, 0] = 2
    write_segmentation(mask_file, specked, geometry)
    touched(mask_file)
    run("2", shots=10)
    assert sid in json.loads((out / "splits.json").read_text())["labelled"]
    assert {key: json.loads((out / "plans.json").read_text())[key] for key in sections} == planned
    assert stored_samples(out)[sid]["boxes"] == [{"label": value, "box": list(box)} for value in (1, 2, 3)
                                                 for box in mask_to_boxes(label[int(index)] == value)]


def test_samples_boxed_before_specks_were_left_out_are_written_again(roots, fake, monkeypatch):
    """A preprocessed folder of an earlier version kept its samples' speck boxes: nothing else about them changed."""
    make_2d_masks(roots["raw"], n_cases=6)
    boxes, speck = preprocessing._sample_boxes, {"label": 1, "box": [47, 39, 47, 39]}
    with monkeypatch.context() as patch:  # each sample boxed as an earlier version did, with a speck
        patch.setattr(preprocessing, "_sample_boxes", lambda *args: [*boxes(*args), speck])
        out = run("1", shots=3).out_dir
    specked, embeddings = stored_samples(out), folder_state(out / "embeddings")
    state_file = out / "preprocessing_state.json"
    state = json.loads(state_file.read_text())
    state.pop("mask_boxes")
    state_file.write_text(json.dumps(state))
    with pytest.raises(AutomedsamError, match="samples were written by an earlier automedsam"):  # not trained on
        load_preprocessed("Dataset001_Discs")
    encoded = fake.encoded
    again = run("1", shots=3)
    assert {sid: meta["boxes"] for sid, meta in stored_samples(out).items()} == {
        sid: meta["boxes"][:-1] for sid, meta in specked.items()}
    assert "samples rewritten: their masks' boxes now leave specks out" in again.preprocessing["notes"]
    reframed = moved_windows(specked, stored_samples(out))
    assert reframed and fake.encoded - encoded == len(reframed), \
        "the images did not change: the embeddings are kept, but of the zooms around the boxes, which moved"
    assert changed_embeddings(out, embeddings) == set(reframed)
    assert_embeddings_show_the_stored_pixels(out)


def exit_code_of(monkeypatch, *args: str) -> int:
    """Run the console script's main() with these arguments; its exit code (0 when it simply returns)."""
    monkeypatch.setattr(sys, "argv", ["automedsam_plan_and_preprocess", *args])
    try:
        cli.main()
    except SystemExit as exit_info:
        return exit_info.code or 0
    return 0


def test_cli_plans_and_reports_errors_without_traceback(roots, fake, monkeypatch, capsys):
    make_2d_masks(roots["raw"], n_cases=6)
    assert exit_code_of(monkeypatch, "-d", "1", "--plan-only", "-np", "1", "--shots", "4") == 0
    assert "Dataset001_Discs: fingerprint measured, 4 labelled samples" in capsys.readouterr().out
    assert exit_code_of(monkeypatch, "-d", "1", "--foundation", "nope") == 2
    error = capsys.readouterr().err
    assert "Unknown foundation model 'nope'" in error and "Traceback" not in error
    assert exit_code_of(monkeypatch, "--help") == 0
    assert "--preprocess-only" in capsys.readouterr().out


def test_an_edited_splits_file_is_refused_clearly_and_planning_again_replaces_it(roots, fake):
    """Without labelled, --preprocess-only and training raised KeyError: 'labelled'; the fix both name is real."""
    make_2d_masks(roots["raw"], n_cases=6)
    out = run("1", shots=4).out_dir
    splits = json.loads((out / "splits.json").read_text())
    (out / "splits.json").write_text(json.dumps({key: value for key, value in splits.items() if key != "labelled"}))
    for attempt in (lambda: run("1", preprocess_only=True), lambda: load_preprocessed("Dataset001_Discs")):
        with pytest.raises(AutomedsamError, match=r"splits.json: it lacks the key\(s\) labelled\. Fix it .* run "
                                                  r"automedsam_plan_and_preprocess -d Dataset001_Discs without "
                                                  r"--preprocess-only to draw it again"):
            attempt()
    for broken in ("[]", "{"):  # a file not an object, or no JSON at all: planning again still draws it anew
        (out / "splits.json").write_text(broken)
        run("1", shots=4)
        assert json.loads((out / "splits.json").read_text()) == splits
    load_preprocessed("Dataset001_Discs")


def test_a_dataset_path_the_other_commands_could_not_name_is_refused_before_anything_is_written(roots, fake,
                                                                                                 tmp_path):
    """`-d myds2` wrote preprocessed/myds2 (no -d names it); `-d elsewhere/Dataset001_Foo` made `-d 1` ambiguous."""
    raw = make_2d_masks(roots["raw"], n_cases=6)
    unnamed = shutil.copytree(raw, tmp_path / "myds2")
    same_id = shutil.copytree(raw, tmp_path / "elsewhere" / "Dataset001_Foo")
    with pytest.raises(AutomedsamError, match=r"myds2 is not named DatasetXXX_Name.*Rename it DatasetXXX_Name"):
        run(str(unnamed), shots=2, folds=2)
    with pytest.raises(AutomedsamError, match=r"The dataset id 001 of .*Dataset001_Foo is already used by "
                                              r"Dataset001_Discs in .*-d 1 would be ambiguous"):
        run(str(same_id), plan_only=True)
    assert not any(roots["preprocessed"].iterdir()), "nothing is written for a refused dataset"
    assert run(str(raw), shots=4, plan_only=True).out_dir == roots["preprocessed"] / "Dataset001_Discs"
    free_id = shutil.copytree(raw, tmp_path / "elsewhere" / "Dataset005_Foo")
    assert run(str(free_id), shots=4, plan_only=True).out_dir == roots["preprocessed"] / "Dataset005_Foo"


@pytest.mark.parametrize("option, message", [({"shots": 0}, "--shots must be"), ({"select": "nope"}, "--select must"),
                                             ({"foundation_name": "nope"}, "Unknown foundation model 'nope'")])
def test_planning_options_are_checked_before_the_fingerprint(roots, fake, monkeypatch, option, message):
    """--shots 0 was refused only after a first run had fingerprinted every image (minutes on a large dataset)."""
    make_2d_masks(roots["raw"], n_cases=6)
    monkeypatch.setattr("automedsam.planning.plan_and_preprocess.run_fingerprint",
                        lambda *args, **kwargs: pytest.fail("fingerprinted before checking the options"))
    with pytest.raises(AutomedsamError, match=message):
        run("1", **option)


def test_litemedsam_embeds_the_labelled_samples(roots):
    """The real encoder behind preprocessing, on the labelled samples and one view each: every embedding is a
    LiteMedSAM pass on the CPU, and the other views are tested on the fake encoder."""
    make_2d_masks(roots["raw"], n_cases=4)
    plans_path = run("1", shots=2, folds=2, plan_only=True).out_dir / "plans.json"
    plans = json.loads(plans_path.read_text())
    plans["augmentation"]["views"] = plans["augmentation"]["views"][:1]
    plans_path.write_text(json.dumps(plans))
    summary = run("1", preprocess_only=True, device="cpu")
    labelled = json.loads((summary.out_dir / "splits.json").read_text())["labelled"]
    folder = summary.out_dir / "embeddings" / "litemedsam"
    assert sorted(path.stem for path in folder.glob("*.npy")) == sorted(labelled + [f"{sid}__v01" for sid in labelled])
    assert summary.preprocessing["embeddings_computed"] == 2 * 2
    first, second = (np.load(folder / f"{sid}.npy", allow_pickle=False) for sid in labelled)
    assert not np.array_equal(first, np.load(folder / f"{labelled[0]}__v01.npy", allow_pickle=False))
    assert first.dtype == np.float16 and first.shape == (256, 64, 64) and np.isfinite(first).all()
    assert not np.array_equal(first, second)


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("kind", ["HC18", "ACDC"])
def test_real_data_ten_shots(roots, shared_data, kind):
    (convert_hc18 if kind == "HC18" else convert_acdc)(shared_data / kind, 1)
    summary = run("1", shots=10, num_workers=2)
    out = summary.out_dir
    plans = json.loads((out / "plans.json").read_text())
    fingerprint = json.loads((out / "fingerprint.json").read_text())
    assert all(plans[section]["reason"] for section in plans if isinstance(plans[section], dict))
    assert all(target["reason"] for target in plans["targets"])
    assert sorted(p.stem for p in (out / "embeddings" / "litemedsam").glob("*.npy")) == with_views(
        json.loads((out / "splits.json").read_text())["labelled"])
    assert summary.preprocessing["embeddings_computed"] == 10 * VIEWS
    again = run("1", shots=10, num_workers=2)
    assert again.fingerprint_reused and again.preprocessing["samples_written"] == 0
    assert again.preprocessing["embeddings_computed"] == 0 and again.seconds < 30
    axis = plans["slicing"]["axis"]
    first = make_splits(fingerprint, axis, shots=10, folds=5, seed=0)
    assert make_splits(fingerprint, axis, shots=10, folds=5, seed=0) == first
    assert make_splits(fingerprint, axis, shots=10, folds=5, seed=1)["labelled"] != first["labelled"]
    if kind == "ACDC":
        assert plans["slicing"]["is_3d"] is True and plans["slicing"]["axis"] == 0
        assert [target["label"] for target in plans["targets"]] == [1, 2, 3]
        myo = plans["targets"][1]
        assert myo["region"] == [2, 3] and myo["subtract"] == [3]
    else:
        assert plans["slicing"]["axis"] is None and plans["postprocessing"]["largest_component"] == {"1": True}


def test_a_view_name_too_long_for_a_labelled_samples_files_is_refused_before_anything_is_written(roots, fake):
    make_3d_ring(roots["raw"])
    out = run("2", shots=4).out_dir
    plans = json.loads((out / "plans.json").read_text())
    longest = max(json.loads((out / "splits.json").read_text())["labelled"], key=len)
    fitting = 255 - len(f"{longest}__.image")
    plans["augmentation"]["views"][0]["name"] = "v" * (fitting + 1)
    (out / "plans.json").write_text(json.dumps(plans))
    before = folder_state(out)
    with pytest.raises(AutomedsamError, match=rf"'v{{{fitting + 1}}}'.*{longest}.*at most {fitting} characters"):
        run("2", preprocess_only=True)
    assert folder_state(out) == before
    plans["augmentation"]["views"][0]["name"] = "v" * fitting
    (out / "plans.json").write_text(json.dumps(plans))
    assert run("2", preprocess_only=True).preprocessing["samples_written"] == 4
