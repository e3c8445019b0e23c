"""The plans accessor: what each section of plans.json means to the stages, read and checked in one place."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from automedsam import plans as plans_module
from automedsam.errors import AutomedsamError
from automedsam.foundation.weights_file import PACKAGED_SHA256, sha256_of
from automedsam.planning.precision import check_key
from automedsam.planning.selection_features import features_key
from automedsam.plans import Plans, target_losses, without_reasons
from automedsam.training.layout import load_preprocessed

PLANS = {
    "plans_name": "automedsamPlans",
    "dataset_name": "Dataset001_X",
    "foundation_model": {"name": "medsam_vit_b", "checkpoint": "/weights/medsam.pth", "input_size": 1024,
                         "precision": "fp32", "reason": "why"},
    "slicing": {"is_3d": True, "axis": 0, "reason": "why"},
    "targets": [{"label": 2, "name": "MYO", "region": [2, 3], "subtract": [3]}, {"label": 3, "name": "LV"}],
    "losses": {"empty_bce": {"weight": 0.1}, "pseudo_label": {"weight": 1.0, "reason": "why"}, "reason": "why"},
}


def test_plans_read_like_the_stored_mapping_and_name_what_they_hold():
    plans = Plans(PLANS, "here/plans.json")
    assert dict(plans) == PLANS and plans["slicing"] is PLANS["slicing"]
    assert Plans(plans).data is PLANS and Plans(plans).where == "here/plans.json"
    assert (plans.name, plans.foundation_name, plans.is_3d, plans.slicing_axis) == ("automedsamPlans", "medsam_vit_b",
                                                                                   True, 0)
    assert plans.labels == [2, 3] and plans.targets is PLANS["targets"]
    assert plans.views() == [], "plans written before views existed have none"


def test_reasons_are_set_aside_at_every_depth():
    assert without_reasons(PLANS["losses"]) == {"empty_bce": {"weight": 0.1}, "pseudo_label": {"weight": 1.0}}
    assert without_reasons([{"reason": "a", "x": (1, {"reason": "b", "y": 2})}]) == [{"x": [1, {"y": 2}]}]
    assert Plans(PLANS).choices("slicing") == {"slicing": {"is_3d": True, "axis": 0}}


def test_planned_losses_are_a_copy_with_an_idle_pseudo_label_term_by_default():
    losses = Plans(PLANS).planned_losses()
    assert "reason" not in losses and losses["pseudo_label"]["weight"] == 1.0
    losses["empty_bce"]["weight"] = 5.0
    assert PLANS["losses"]["empty_bce"]["weight"] == 0.1, "the plans stay as stored"
    older = {**PLANS, "losses": {"empty_bce": {"weight": 1.0}}}
    assert Plans(older).planned_losses() == {"empty_bce": {"weight": 1.0}, "pseudo_label": {"weight": 0.0}}


def test_the_foundation_model_is_the_planned_one_unless_the_caller_overrides_its_weights_or_precision(monkeypatch):
    built = []
    monkeypatch.setattr(plans_module, "build_foundation_model",
                        lambda name, checkpoint, *, device, precision, resize: built.append(
                            (name, checkpoint, device, precision, resize)) or "model")
    assert Plans(PLANS).build_foundation_model(device="cpu") == "model"
    Plans(PLANS).build_foundation_model(checkpoint="/elsewhere/medsam.pth", device="cpu", precision="bf16")
    no_precision = {**PLANS, "foundation_model": {"name": "litemedsam", "checkpoint": None}}
    Plans(no_precision).build_foundation_model()
    stretched = {**PLANS, "foundation_model": {**PLANS["foundation_model"], "resize": "stretch"}}
    Plans(stretched).build_foundation_model(device="cpu")
    assert built == [("medsam_vit_b", "/weights/medsam.pth", "cpu", "fp32", "longest_side"),
                     ("medsam_vit_b", "/elsewhere/medsam.pth", "cpu", "bf16", "longest_side"),
                     ("litemedsam", None, None, "fp32", "longest_side"),
                     ("medsam_vit_b", "/weights/medsam.pth", "cpu", "fp32", "stretch")]  # plans before it: as trained


def test_importing_the_planner_loads_no_torch_segment_anything_or_matplotlib():
    code = ("import sys, automedsam.plans, automedsam.planning.planner; "
            "print(sorted(m for m in ('torch', 'segment_anything', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_normalise_clips_to_the_intensity_window_and_scales():
    plans = {"normalization": {"scheme": "percentile_window", "lower": 10.0, "upper": 30.0}}
    out = Plans(plans).normalise(np.array([[0, 10, 20], [30, 40, 25]], dtype=np.int16))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 0, 0.5], [1, 1, 0.75]])


def test_normalise_holds_one_float32_copy_and_leaves_the_image_as_it_was():
    """A large volume's normalisation held three float32 copies of it beside the image (clip, subtract, divide)."""
    plans = Plans({"normalization": {"scheme": "percentile_window", "lower": -100.0, "upper": 300.0}})
    image = np.random.default_rng(0).normal(100, 200, size=(64, 128, 128)).astype(np.float32)
    kept = image.copy()
    tracemalloc.start()
    out = plans.normalise(image)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(image, kept), "the caller's float32 image is not normalised in place"
    assert peak < 1.5 * image.nbytes
    expected = (np.clip(kept, -100.0, 300.0) - np.float32(-100.0)) / np.float32(400.0)
    assert out.dtype == np.float32 and np.array_equal(out, expected)


@pytest.mark.parametrize("section, message", [({"scheme": "zscore", "lower": 0, "upper": 1}, "scheme"),
                                              ({"scheme": "percentile_window", "lower": 2, "upper": 2}, "upper")])
def test_normalise_rejects_a_broken_intensity_window(section, message):
    with pytest.raises(AutomedsamError, match=message):
        Plans({"normalization": section}).normalise(np.zeros((2, 2)))


@pytest.mark.parametrize("view, message", [
    ({"name": "v", "rotate": 1}, "unknown key.*rotate"),
    ({"name": "v", "rot90": 4}, "rot90 must be 0, 1, 2 or 3"),
    ({"name": "v", "rot90": -1}, "rot90"),
    ({"name": "v", "gamma": 0}, "gamma must be a finite number > 0"),
    ({"name": "v", "gamma": -0.5}, "gamma"),
    ({"name": "v", "gamma": "1"}, "gamma"),
    ({"name": "v", "flip": [2]}, "flip must list"),
    ({"name": "v", "scale": 0}, "scale must be a number from 0.25 to 4"),
    ({"name": "v", "scale": 5}, "scale"),
    ({"name": "v", "scale": True}, "scale"),
    ({"name": "v", "flip": [1, 1]}, "flip"),
    ({"flip": [1]}, "name"),
    ({"name": "z007"}, "slice form"),
    ({"name": "a b"}, "name"),
    ("v01", "must be a dict"),
])
def test_bad_hand_edited_views_name_the_key(view, message):
    plans = {"augmentation": {"views": [{"name": "ok"}, view]}}
    with pytest.raises(AutomedsamError, match=rf"plans.json augmentation.views\[1\].*{message}"):
        Plans(plans).views()


def test_plans_without_the_section_have_no_views_and_a_broken_section_is_named():
    assert Plans({"training": {}}).views() == []
    assert Plans({"augmentation": {"views": []}}).views() == []
    with pytest.raises(AutomedsamError, match="augmentation.views must be a list"):
        Plans({"augmentation": {"views": {"name": "v"}}}).views()
    with pytest.raises(AutomedsamError, match="v01 used twice"):
        Plans({"augmentation": {"views": [{"name": "v01"}, {"name": "v01", "rot90": 2}]}}).views()
    assert Plans({"augmentation": {"views": [{"name": "v"}]}}).views() == [
        {"name": "v", "flip": [], "rot90": 0, "gamma": 1.0, "scale": 1.0}]


def test_a_target_the_plans_exempt_gets_no_pseudo_label_term():
    losses = {"empty_bce": {"weight": 1.0}, "pseudo_label": {"weight": 1.0}}
    assert "pseudo_label" in target_losses(losses, {"label": 1})  # plans written before the switch: box prompts
    assert "pseudo_label" in target_losses(losses, {"label": 1, "pseudo_label": "inscribed_ellipse"})
    assert target_losses(losses, {"label": 2, "pseudo_label": "none"}) == {"empty_bce": {"weight": 1.0}}
    assert "pseudo_label" not in target_losses({**losses, "pseudo_label": {"weight": 0.0}}, {"label": 1})


def test_an_unknown_pseudo_label_source_is_a_clear_error():
    with pytest.raises(AutomedsamError, match="pseudo_label must be one of box_prompt, inscribed_ellipse, none"):
        target_losses({"empty_bce": {"weight": 1.0}}, {"label": 1, "pseudo_label": True})


def test_a_target_with_its_own_margins_trains_with_them_and_the_others_with_the_union():
    losses = {"box_size": {"weight": 1e-2, "margins": [0.3, 0.86], "target_margins": {"2": [0.68, 0.85]}}}
    assert target_losses(losses, {"label": 2})["box_size"]["margins"] == [0.68, 0.85]
    assert target_losses(losses, {"label": 1})["box_size"]["margins"] == [0.3, 0.86]


def embedded_plans(section: dict) -> Plans:
    """Plans holding only what an embedding depends on, with the given foundation_model section."""
    return Plans({"slicing": {"is_3d": False, "axis": None, "reason": "why"},
                  "normalization": {"scheme": "percentile_window", "lower": 0.0, "upper": 1.0},
                  "foundation_model": section})


def key_by_path(plans: Plans) -> str:
    """embeddings_key as computed before the weights' contents counted: the sections as written, checkpoint path and
    all, less the precision check."""
    choices = plans.choices("slicing", "normalization", "foundation_model")
    choices["foundation_model"].pop("precision_check", None)
    return hashlib.sha256(json.dumps(without_reasons([choices]), sort_keys=True).encode()).hexdigest()


def test_weights_saved_over_the_planned_checkpoint_change_the_embeddings_key(tmp_path):
    """A fine-tune saved over the planned weights file kept every cached embedding: the key hashed the path only."""
    weights = tmp_path / "medsam_vit_b.pth"
    weights.write_bytes(b"original weights")
    section = {"name": "medsam_vit_b", "checkpoint": str(weights), "input_size": 1024, "precision": "fp32"}
    before = embedded_plans(section).embeddings_key()
    assert embedded_plans(section).embeddings_key() == before, "the same file gives the same key"
    weights.write_bytes(b"finetuned weights")  # the same size, as weights of one architecture have
    os.utime(weights, ns=(2 * 10**18, 2 * 10**18))
    after = embedded_plans(section).embeddings_key()
    assert after != before
    assert embedded_plans(section).embedding_choices()["foundation_model"]["weights_sha256"] == hashlib.sha256(
        b"finetuned weights").hexdigest()


def test_weights_saved_over_the_planned_checkpoint_change_the_selection_and_precision_keys(tmp_path):
    """The selection's pooled features and the precision check were matched to the weights by their path too."""
    weights = tmp_path / "medsam_vit_b.pth"
    weights.write_bytes(b"original weights")
    section = {"name": "medsam_vit_b", "checkpoint": str(weights), "input_size": 1024, "precision": "fp32"}

    def keys() -> tuple[str, str]:
        check = check_key(section, ["case00"], "samples", torch.device("cpu"), masks=False, written={})
        return features_key(embedded_plans(section)), check
    before = keys()
    weights.write_bytes(b"finetuned weights")
    os.utime(weights, ns=(2 * 10**18, 2 * 10**18))
    after = keys()
    assert after[0] != before[0] and after[1] != before[1]


def preprocessed_with_embeddings(folder: Path, section: dict) -> Path:
    """A preprocessed folder whose embeddings were made under plans with the given foundation_model section."""
    folder.mkdir(parents=True)
    plans = {**embedded_plans(section).data, "targets": []}
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "splits.json").write_text(json.dumps({"seed": 0, "shots": 2, "labelled": ["a", "b"],
                                                    "folds": [{"train": ["a"], "val": ["b"]}]}))
    (folder / "preprocessing_state.json").write_text(json.dumps(
        {"embeddings": {section["name"]: Plans(plans).embeddings_key()}}))
    return folder


def test_training_given_the_planned_weights_elsewhere_trusts_the_embeddings_they_made(tmp_path, roots):
    """`automedsam_train --foundation-checkpoint` names the weights where the planned path is gone (a folder copied
    to another machine): training was refused for the missing planned file, though the file given made the cache."""
    planned = tmp_path / "planned" / "medsam_vit_b.pth"
    planned.parent.mkdir()
    planned.write_bytes(b"weights")
    section = {"name": "medsam_vit_b", "checkpoint": str(planned), "input_size": 1024, "precision": "fp32"}
    folder = preprocessed_with_embeddings(roots["preprocessed"] / "Dataset009_Copied", section)
    given = tmp_path / "here.pth"
    planned.rename(given)
    with pytest.raises(AutomedsamError, match="give it with --foundation-checkpoint"):
        load_preprocessed("Dataset009_Copied")
    assert load_preprocessed("Dataset009_Copied", foundation_checkpoint=given)[0] == folder
    given.write_bytes(b"other weights")
    with pytest.raises(AutomedsamError, match="embeddings were made under other plans"):
        load_preprocessed("Dataset009_Copied", foundation_checkpoint=given)


def test_training_given_other_weights_than_the_packaged_ones_planned_is_refused(tmp_path, roots, monkeypatch):
    """`automedsam_train --foundation-checkpoint finetune.pth` under plans of the packaged LiteMedSAM weights trained
    the prompt modules on the packaged encoder's cached embeddings, silently, and recorded the fine-tune as the
    weights they were trained with, so prediction encoded with an encoder they never saw."""
    packaged = tmp_path / "lite_medsam.pth"
    packaged.write_bytes(b"packaged weights")
    monkeypatch.setitem(PACKAGED_SHA256, "litemedsam", hashlib.sha256(b"packaged weights").hexdigest())
    finetune = tmp_path / "finetune.pth"
    finetune.write_bytes(b"finetuned weights")
    section = {"name": "litemedsam", "checkpoint": None, "input_size": 256, "precision": "fp32"}
    folder = preprocessed_with_embeddings(roots["preprocessed"] / "Dataset010_Lite", section)
    assert embedded_plans(section).embeddings_key(weights=packaged) == embedded_plans(section).embeddings_key()
    assert load_preprocessed("Dataset010_Lite", foundation_checkpoint=packaged)[0] == folder
    with pytest.raises(AutomedsamError, match=f"weights {finetune} given with --foundation-checkpoint are not the "
                                              "packaged litemedsam weights .* plan with them: automedsam_plan_and_"
                                              f"preprocess --foundation litemedsam --foundation-checkpoint {finetune}"):
        load_preprocessed("Dataset010_Lite", foundation_checkpoint=finetune)
    with pytest.raises(AutomedsamError, match="given with --foundation-checkpoint do not exist"):
        load_preprocessed("Dataset010_Lite", foundation_checkpoint=tmp_path / "gone.pth")


def test_the_packaged_weights_and_a_pinned_hash_keep_the_keys_recorded_before(tmp_path):
    """The keys of LiteMedSAM's shipped weights (no checkpoint) and of an installed model (its sha256 pinned, other
    weights refused at build) stay as recorded by earlier versions: their caches are kept."""
    weights = tmp_path / "medsam_vit_b.pth"
    weights.write_bytes(b"installed weights")
    packaged = {"name": "litemedsam", "checkpoint": None, "input_size": 256, "precision": "fp32",
                "precision_check": {"passed": False}, "reason": "why"}
    installed = {"name": "medsam_vit_b", "checkpoint": str(weights), "input_size": 1024, "precision": "fp32",
                 "sha256": hashlib.sha256(b"installed weights").hexdigest(), "weights_file": weights.name}
    for section in (packaged, installed):
        assert embedded_plans(section).embeddings_key() == key_by_path(embedded_plans(section)), section["name"]


def test_a_missing_planned_weights_file_is_a_clear_error(tmp_path):
    gone = tmp_path / "gone.pth"
    plans = embedded_plans({"name": "medsam_vit_b", "checkpoint": str(gone), "input_size": 1024})
    with pytest.raises(AutomedsamError, match=f"weights {gone} named in plans.json .* do not exist.*"
                                              "--foundation-checkpoint PATH"):
        plans.embeddings_key()


def test_a_weights_file_copied_over_with_its_size_and_time_is_hashed_again(tmp_path):
    """`cp -p` of a fine-tune over the weights keeps their size and can keep their modification time."""
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"A" * 16)
    assert sha256_of(weights) == hashlib.sha256(b"A" * 16).hexdigest()
    stat = weights.stat()
    time.sleep(0.05)  # past the file system's clock tick, so the change time moves
    weights.write_bytes(b"B" * 16)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert sha256_of(weights) == hashlib.sha256(b"B" * 16).hexdigest()
