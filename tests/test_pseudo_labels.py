"""Pseudo-labels from the frozen model's box prompts: close to the truth, inside the box, wired into training."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from test_training import DATASET, ELLIPSE, blob_sample, make_plans, write_preprocessed

from automedsam.boxes import mask_to_boxes
from automedsam.evaluation import dice
from automedsam.foundation.base import FoundationModel
from automedsam.foundation.registry import build_foundation_model
from automedsam.planning.planner import plan_losses
from automedsam.training import get_variant, train_fold
from automedsam.training import trainer as trainer_module
from automedsam.training.data import low_res_box
from automedsam.training.pseudo_labels import box_pseudo_labels, ellipse_pseudo_labels


@pytest.fixture(scope="module")
def foundation():
    return build_foundation_model("litemedsam", device="cpu")


def test_box_prompted_pseudo_label_is_close_to_the_ellipse_and_inside_its_box(foundation):
    image, label_map = blob_sample(np.random.default_rng(5))
    truth = label_map == 1
    prepared, frame = foundation.prepare(image)
    embedding = foundation.encode(prepared[None]).half()
    box = low_res_box(foundation, mask_to_boxes(truth)[0], frame)
    masks = box_pseudo_labels(foundation, embedding, [[box], []])
    x0, y0, x1, y1 = box
    inside = torch.zeros(masks.shape[2:], dtype=torch.bool)
    inside[y0:y1 + 1, x0:x1 + 1] = True
    assert masks[0, 0][~inside].sum() == 0, "the pseudo-label never leaves its box"
    truth_low_res = foundation.mask_to_low_res(truth.astype(np.uint8), frame).astype(bool)
    assert dice(truth_low_res, masks[0, 0].numpy() > 0.5) > 0.85
    assert masks[1].sum() == 0, "a sample without a box gets an empty pseudo-label"


def test_planner_turns_pseudo_labels_on_for_default_and_paper2024_stays_the_paper():
    plans = make_plans([ELLIPSE])
    plans["losses"] = plan_losses({"label_statistics": {}}, [])
    assert plans["losses"]["pseudo_label"]["weight"] > 0 and plans["losses"]["pseudo_label"]["reason"]
    assert get_variant("default").configure(plans).losses["pseudo_label"]["weight"] > 0
    assert get_variant("paper2024").configure(plans).losses["pseudo_label"] == {"weight": 0.0}
    assert get_variant("fullsup").configure(plans).losses["pseudo_label"] == {"weight": 0.0}


def test_training_with_pseudo_labels_runs_and_logs_the_term(roots, foundation):
    plans = make_plans([ELLIPSE], epochs=1, val_every=1)
    plans["losses"]["pseudo_label"] = {"weight": 1.0}
    write_preprocessed(roots["preprocessed"], plans, n_samples=3, n_train=2)  # random embeddings: mechanics only
    result = train_fold(DATASET, 0, foundation=foundation, console=Console(quiet=True))
    log = json.loads((result.fold_dir / "log.json").read_text())
    terms = log["epochs"][0]["loss_terms"]
    assert set(terms) == {"empty_bce", "tightness", "box_size", "pseudo_label"}
    assert 0 < terms["pseudo_label"] < 2


def test_ellipse_pseudo_labels_fill_each_box_roundly_and_stay_inside_it():
    masks = ellipse_pseudo_labels([[[10, 20, 49, 39]], [], [[0, 0, 9, 9], [30, 30, 39, 39]]], 64)
    assert masks.shape == (3, 1, 64, 64) and set(masks.unique().tolist()) == {0.0, 1.0}
    first = masks[0, 0].numpy() > 0.5
    assert first[20:40, 10:50].sum() == first.sum(), "inside its box"
    assert first[30, 10] and first[30, 49] and first[20, 30] and first[39, 30], "touches the four edges"
    assert not first[20, 10] and not first[39, 49], "not the corners"
    assert first.sum() / (40 * 20) == pytest.approx(np.pi / 4, abs=0.03)
    assert masks[1].sum() == 0, "a sample without a box gets an empty pseudo-label"
    assert masks[2, 0, :10, :10].sum() > 0 and masks[2, 0, 30:40, 30:40].sum() > 0, "the union over a sample's boxes"


def expected_pseudo_labels(folder: Path, sample_ids: list[str], foundation: FoundationModel,
                           source: str) -> torch.Tensor:
    """The target's pseudo-labels of the samples computed here, from their own files: the ellipses inscribed in
    their boxes, or the frozen model's masks prompted with them on their embeddings."""
    boxes, embeddings = [], []
    for sample_id in sample_ids:
        meta = json.loads((folder / "samples" / f"{sample_id}.json").read_text())
        frame = foundation.frame_for(tuple(meta["shape"]))
        boxes.append([low_res_box(foundation, entry["box"], frame) for entry in meta["boxes"]
                      if entry["label"] == ELLIPSE["label"]])
        embeddings.append(torch.from_numpy(np.load(folder / "embeddings" / "litemedsam" / f"{sample_id}.npy")))
    if source == "inscribed_ellipse":
        return ellipse_pseudo_labels(boxes, foundation.low_res_size)
    return box_pseudo_labels(foundation, torch.stack(embeddings), boxes)


@pytest.mark.parametrize("source, terms", [
    ("inscribed_ellipse", {"empty_bce", "tightness", "box_size", "pseudo_label"}),
    ("box_prompt", {"empty_bce", "tightness", "box_size", "pseudo_label"}),
    ("none", {"empty_bce", "tightness", "box_size"}),
])
def test_training_follows_each_targets_pseudo_label_source(roots, foundation, monkeypatch, source, terms):
    """The term's name in the log cannot tell the sources apart: what the trainer takes as the pseudo-labels must be
    those of the target's own source, computed on the training samples' boxes."""
    plans = make_plans([ELLIPSE], epochs=1, val_every=1)
    plans["losses"]["pseudo_label"] = {"weight": 1.0}
    plans["targets"][0]["pseudo_label"] = source
    folder = write_preprocessed(roots["preprocessed"], plans, n_samples=3, n_train=2)
    used: list[torch.Tensor] = []
    real = trainer_module.pseudo_labels

    def recording(*args, **kwargs) -> torch.Tensor:
        used.append(real(*args, **kwargs))
        return used[-1]

    monkeypatch.setattr(trainer_module, "pseudo_labels", recording)
    result = train_fold(DATASET, 0, foundation=foundation, console=Console(quiet=True))
    logged = json.loads((result.fold_dir / "log.json").read_text())["epochs"][0]["loss_terms"]
    assert set(logged) == terms
    if source == "none":
        assert used == []
        return
    train_ids = json.loads((folder / "splits.json").read_text())["folds"][0]["train"]
    expected = {kind: expected_pseudo_labels(folder, train_ids, foundation, kind)
                for kind in ("inscribed_ellipse", "box_prompt")}
    assert not torch.equal(expected["inscribed_ellipse"], expected["box_prompt"]), "the two sources differ here"
    assert len(used) == 1 and torch.equal(used[0], expected[source])


def test_each_samples_pseudo_label_comes_from_its_own_embedding_and_boxes_across_decoder_batches(foundation):
    """Prompts of several samples share decoder batches: a row mixed up between samples gives a sample another
    image's pseudo-label (one sample and one prompt could not tell)."""
    embeddings, boxes = [], []
    for seed in (5, 6):
        image, label_map = blob_sample(np.random.default_rng(seed))
        prepared, frame = foundation.prepare(image)
        embeddings.append(foundation.encode(prepared[None]).half()[0])
        boxes.append(low_res_box(foundation, mask_to_boxes(label_map == 1)[0], frame))
    shifted = [min(value + 6, foundation.low_res_size - 1) for value in boxes[1]]
    stacked = torch.stack([embeddings[0], embeddings[1], embeddings[0]])
    per_sample = [[], [boxes[1], shifted], [boxes[0]]]
    together = box_pseudo_labels(foundation, stacked, per_sample, batch_size=2)
    assert together[0].sum() == 0 and together[1].sum() > 0 and together[2].sum() > 0
    for index, sample_boxes in enumerate(per_sample):
        alone = box_pseudo_labels(foundation, stacked[index:index + 1], [sample_boxes], batch_size=2)
        assert torch.equal(together[index], alone[0]), f"sample {index}"
