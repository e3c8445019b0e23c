"""The trainer: variants, fold data, the training loop end to end, resume, the CLI's errors, DDP under torchrun."""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import subprocess
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from segment_anything.modeling import PromptEncoder

from automedsam.box_refinement import refinement_applies
from automedsam.boxes import mask_to_boxes
from automedsam.checkpoint import is_complete, load_checkpoint, load_metadata, load_training_state
from automedsam.cli.train import main
from automedsam.errors import AutomedsamError
from automedsam.folds import parse_fold
from automedsam.inference.model_folder import locate_model_folder, open_model_folder
from automedsam.model_sharing.export import export_model
from automedsam.model_sharing.install import install_model
from automedsam.foundation.base import FoundationModel
from automedsam.foundation.registry import build_foundation_model
from automedsam.planning.augmentation import transform_box, transform_image, transform_label_map, transform_pair
from automedsam.plans import Plans
from automedsam.prompt_module import build_prompt_module, load_modules, modules_state_dict
from automedsam.training import TRAINER_VARIANTS, get_variant, train_fold
from automedsam.training import trainer as trainer_module
from automedsam.training.data import SampleSet, load_sample_set
from automedsam.training.initialisation import start_at_mean_box
from automedsam.trained_models import fold_lock_path, keep_previous
from automedsam.training.layout import seed_offset
from automedsam.training.loop import training_autocast
from automedsam.training.report import missed_targets, target_lines
from automedsam.training.validation import ValidationResult, box_metrics, validate

DATASET = "Dataset901_Blobs"
SHAPE = (96, 128)
VENV_BIN = Path(sys.executable).parent


def quiet() -> Console:
    return Console(quiet=True)


def make_plans(targets: list[dict], epochs: int = 4, val_every: int = 2, center_channels: int = 16) -> dict:
    return {
        "plans_name": "automedsamPlans",
        "dataset_name": DATASET,
        "foundation_model": {"name": "litemedsam", "checkpoint": None, "input_size": 256, "precision": "fp32",
                             "reason": "test"},
        "slicing": {"is_3d": False, "axis": None, "reason": "test"},
        "normalization": {"scheme": "minmax", "lower": 0.0, "upper": 1.0, "reason": "test"},
        "prompt_module": {"center_channels": center_channels, "num_points": 1, "reason": "test"},
        "targets": targets,
        "losses": {"empty_bce": {"weight": 1.0}, "tightness": {"weight": 1e-4, "band_width": 5},
                   "box_size": {"weight": 1e-2, "margins": [0.5, 0.9]}, "log_barrier_t": 5.0, "reason": "test"},
        "training": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-4, "epochs": epochs, "batch_size": 4,
                     "lr_step_epoch": max(1, epochs // 2), "lr_gamma": 0.1, "val_every": val_every, "seed": 7,
                     "reason": "test"},
        "postprocessing": {"largest_component": {}, "reason": "test"},
    }


TWO_VIEWS = {"views": [{"name": "v01", "flip": [], "rot90": 1, "gamma": 1.0},
                       {"name": "v02", "flip": [1], "rot90": 0, "gamma": 0.8}], "reason": "test"}
ELLIPSE = {"label": 1, "name": "blob", "region": [1], "subtract": [], "per_component": False}
RING = {"label": 2, "name": "ring", "region": [1, 2], "subtract": [1], "per_component": False}


def blob_sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipse (label 1) with a darker ring around it (label 2) on a noisy background, in [0, 1]."""
    rows, cols = np.mgrid[: SHAPE[0], : SHAPE[1]]
    cy, cx = rng.uniform(35, 61), rng.uniform(40, 88)
    ay, ax = rng.uniform(12, 22), rng.uniform(16, 30)
    radius = ((rows - cy) / ay) ** 2 + ((cols - cx) / ax) ** 2
    label_map = np.zeros(SHAPE, np.uint8)
    label_map[radius <= 1.6] = 2
    label_map[radius <= 1.0] = 1
    image = 0.15 + 0.05 * rng.standard_normal(SHAPE) + 0.35 * (label_map == 2) + 0.7 * (label_map == 1)
    return np.clip(image, 0, 1).astype(np.float32), label_map  # normalised, as preprocessing stores it


def write_preprocessed(root: Path, plans: dict, n_samples: int, n_train: int, foundation=None,
                       with_masks: bool = True, seed: int = 0, fold_count: int = 5) -> Path:
    """The contract's preprocessed artifacts; real embeddings when a foundation model is given, else random."""
    folder = root / DATASET
    (folder / "samples").mkdir(parents=True)
    (folder / "embeddings" / "litemedsam").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    ids = [f"blob{i:03d}" for i in range(n_samples)]
    for sample_id in ids:
        image, label_map = blob_sample(rng)
        boxes = [{"label": t["label"], "box": list(box)} for t in plans["targets"]
                 for box in mask_to_boxes(np.isin(label_map, t["region"]))]
        meta = {"sample_id": sample_id, "case": sample_id, "slice": None, "shape": list(SHAPE), "spacing": [1.0, 1.0],
                "boxes": boxes, "has_mask": with_masks}
        write_sample(folder, meta, image, label_map if with_masks else None, foundation, rng)
        for view in Plans(plans).views():  # as preprocessing writes them for every labelled sample
            moved = [{"label": entry["label"], "box": transform_box(entry["box"], SHAPE, view)} for entry in boxes]
            view_meta = {**meta, "sample_id": f"{sample_id}__{view['name']}", "boxes": moved,
                         "shape": transform_pair(list(SHAPE), view), "source_sample": sample_id, "view": view}
            write_sample(folder, view_meta, transform_image(image, view),
                         transform_label_map(label_map, view) if with_masks else None, foundation, rng)
    folds = [{"train": ids[:n_train], "val": ids[n_train:]} for _ in range(fold_count)]
    splits = {"seed": 0, "shots": n_samples, "labelled": ids, "folds": folds}  # a fold's samples are all labelled
    (folder / "splits.json").write_text(json.dumps(splits))
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "blob": 1, "ring": 2},
                                                     "channel_names": {"0": "US"}, "numTraining": n_samples,
                                                     "file_ending": ".png"}))
    (folder / "fingerprint.json").write_text(json.dumps({"cases": n_samples}))
    return folder


def write_sample(folder: Path, meta: dict, image: np.ndarray, label_map: np.ndarray | None, foundation,
                 rng: np.random.Generator) -> None:
    """One sample's npz, json and embedding (real when a foundation model is given, else random)."""
    arrays = {"image": image} if label_map is None else {"image": image, "mask": label_map}
    np.savez_compressed(folder / "samples" / f"{meta['sample_id']}.npz", **arrays)
    (folder / "samples" / f"{meta['sample_id']}.json").write_text(json.dumps(meta))
    if foundation is None:
        embedding = rng.standard_normal((256, 64, 64)).astype(np.float16)
    else:
        prepared, _ = foundation.prepare(image)
        embedding = foundation.encode(prepared[None])[0].numpy().astype(np.float16)
    np.save(folder / "embeddings" / "litemedsam" / f"{meta['sample_id']}.npy", embedding)


class CheapFoundation(FoundationModel):
    """LiteMedSAM's geometry with a one-layer differentiable decoder: the loop's mechanics at a fraction of the cost."""

    def __init__(self) -> None:
        self.name, self.input_size, self.precision, self.device = "litemedsam", 256, "fp32", torch.device("cpu")
        self.resize = "longest_side"
        torch.manual_seed(0)
        self.prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256),
                                            mask_in_chans=16)
        self.weight = torch.randn(256) / 16

    def decode(self, embeddings, sparse, dense):
        coarse = torch.einsum("bchw,c->bhw", embeddings + dense, self.weight) + sparse.mean(dim=(1, 2))[:, None, None]
        return F.interpolate(coarse[:, None], size=(256, 256), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def foundation():
    return build_foundation_model("litemedsam", device="cpu")


@pytest.fixture(scope="module")
def cheap():
    return CheapFoundation()


@pytest.fixture
def blobs(roots):
    """Two targets (ellipse and ring), random embeddings: fast, exercises every code path but learning."""
    return write_preprocessed(roots["preprocessed"], make_plans([ELLIPSE, RING]), n_samples=6, n_train=4)


@pytest.fixture
def blobs_with_views(roots):
    """`blobs` whose plans have two augmentation views, written for every sample as preprocessing does."""
    plans = {**make_plans([ELLIPSE, RING]), "augmentation": TWO_VIEWS}
    return write_preprocessed(roots["preprocessed"], plans, n_samples=6, n_train=4)


def fold_dir(roots, trainer="default", fold="fold_0") -> Path:
    return roots["results"] / DATASET / f"{trainer}__automedsamPlans" / fold


MOVED = 1e-4  # as in test_training_equivalence: above rounding, below what one Adam step at lr 1e-3 moves a weight


def largest_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    """How far any weight moved between two snapshots of the same modules."""
    assert before.keys() == after.keys()
    return max(float((after[key].float() - before[key].float()).abs().max()) for key in before)


def record_epoch_starts(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, torch.Tensor]]:
    """The modules' weights as each epoch begins, the first being what training starts from (the mean box start):
    without them a run that learns nothing passes every check on what it writes."""
    starts: list[dict[str, torch.Tensor]] = []
    real_epoch = trainer_module.train_epoch

    def recording(modules, *args, **kwargs):
        starts.append(modules_state_dict(modules))
        return real_epoch(modules, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_epoch", recording)
    return starts


# --- variants and folds -------------------------------------------------------------------------------------


def test_variants_registry_holds_the_three_recipes():
    assert set(TRAINER_VARIANTS) == {"default", "paper2024", "fullsup"}
    assert all(name == variant.name and variant.description for name, variant in TRAINER_VARIANTS.items())
    with pytest.raises(AutomedsamError, match="Unknown trainer 'nope'.*default"):
        get_variant("nope")


def test_default_keeps_the_plans_and_adds_an_idle_pseudo_label_term():
    plans = make_plans([ELLIPSE], epochs=30)
    config = get_variant("default").configure(plans)
    assert config.supervision == "boxes" and config.epochs == 30 and config.seed == 7
    assert config.losses["tightness"] == {"weight": 1e-4, "band_width": 5}
    assert config.losses["pseudo_label"] == {"weight": 0.0} and "reason" not in config.losses
    assert config.augmentation_views is False, "plans written before views existed have none"


def test_the_plans_views_are_used_by_default_and_fullsup_but_never_by_paper2024():
    plans = {**make_plans([ELLIPSE]), "augmentation": TWO_VIEWS}
    used = {name: get_variant(name).configure(plans).augmentation_views for name in TRAINER_VARIANTS}
    assert used == {"default": True, "fullsup": True, "paper2024": False}
    assert get_variant("default").configure({**plans, "augmentation": {"views": []}}).augmentation_views is False


def test_a_supervised_term_in_the_plans_losses_is_refused_by_default_and_left_to_fullsup():
    """The default trainer never reads a mask: a hand-added supervised term crashed its first batch."""
    plans = make_plans([ELLIPSE])
    plans["losses"]["supervised"] = {"weight": 1.0}
    with pytest.raises(AutomedsamError, match="supervised term.*--trainer fullsup"):
        get_variant("default").configure(plans)
    assert get_variant("fullsup").configure(plans).supervision == "masks"
    plans["losses"]["supervised"] = {"weight": 0.0}  # off, as the default pseudo_label term is
    assert get_variant("default").configure(plans).losses["supervised"] == {"weight": 0.0}


def test_paper2024_ignores_the_plans_schedule_and_losses():
    plans = make_plans([ELLIPSE], epochs=3)
    plans["losses"]["empty_bce"]["weight"] = 7.0
    plans["training"].update(lr=0.5, batch_size=32)
    config = get_variant("paper2024").configure(plans)
    assert (config.lr, config.weight_decay, config.epochs, config.batch_size) == (1e-3, 1e-4, 100, 4)
    assert (config.lr_step_epoch, config.lr_gamma, config.optimizer) == (50, 0.1, "adam")
    assert config.losses["empty_bce"]["weight"] == 1.0
    assert config.losses["box_size"] == {"weight": 1e-2, "margins": [0.5, 0.9]}
    assert config.losses["log_barrier_t"] == 5.0 and config.val_every == 2


def test_fullsup_trains_on_masks_and_epoch_override_keeps_the_lr_drop_fraction():
    config = get_variant("fullsup").configure(make_plans([ELLIPSE], epochs=100))
    assert config.supervision == "masks" and config.losses["supervised"]["weight"] == 1.0
    assert "empty_bce" not in config.losses
    short = get_variant("paper2024").configure(make_plans([ELLIPSE])).with_epochs(10)
    assert (short.epochs, short.lr_step_epoch) == (10, 5)


@pytest.mark.parametrize(
    "text, expected", [("fold0", 0), ("4", 4), (3, 3), ("fold_2", 2), ("all", "all"), ("ALL", "all")]
)
def test_parse_fold_accepts_the_documented_spellings(text, expected):
    assert parse_fold(text) == expected


@pytest.mark.parametrize("text", ["-1", "train", "", "fold", "fold-1"])
def test_parse_fold_rejects_anything_else(text):
    with pytest.raises(AutomedsamError, match="Unknown fold.*fold0 or fold_0"):
        parse_fold(text)


def test_the_folds_are_those_of_splits_json_and_all_never_shares_a_numbered_folds_seed(roots, cheap):
    """--folds 6 writes six folds: fold 5 trains and fold 6 is refused before anything is written (nnU-Net checks a
    fold against its splits file, not against a fixed count); `all` seeds after every numbered fold."""
    write_preprocessed(roots["preprocessed"], make_plans([ELLIPSE]), n_samples=6, n_train=4, fold_count=6)
    result = train_fold(DATASET, "fold5", epochs=1, foundation=cheap, console=quiet())
    assert result.summary["finished"] and result.fold_dir == fold_dir(roots, fold="fold_5")
    with pytest.raises(AutomedsamError, match=r"Fold 6 does not exist: splits.json has 6 folds \(0..5\)"):
        train_fold(DATASET, "6", epochs=1, foundation=cheap, console=quiet())
    assert not fold_dir(roots, fold="fold_6").exists()
    offsets = [seed_offset(fold, 6) for fold in [*range(6), "all"]]
    assert len(set(offsets)) == 7 and seed_offset("all", 5) == 5


# --- data and validation metrics ----------------------------------------------------------------------------


def test_fold_data_maps_boxes_and_masks_into_the_low_res_frame(blobs, cheap):
    plans = json.loads((blobs / "plans.json").read_text())
    data = load_sample_set(blobs, plans, ["blob000", "blob001"], cheap, masks=True)
    assert data.embeddings.shape == (2, 256, 64, 64) and data.embeddings.dtype == torch.float16
    assert data.has_masks and set(data.targets) == {1, 2}
    ring = data.targets[2]
    mask = ring.masks_low_res[0, 0].numpy().astype(bool)
    assert ring.masks_original[0].shape == SHAPE
    # 128 px wide -> 256 low-res pixels: scale 2; the box of the low-res mask is the low-res box
    assert mask_to_boxes(mask) == [tuple(ring.boxes_low_res[0][0])]
    assert mask[:, :].sum() > data.targets[1].masks_low_res[0, 0].sum()
    assert not mask[192:].any(), "rows below the resized image are padding"


def test_views_are_loaded_as_rows_after_the_samples_with_their_moved_boxes_and_masks(blobs_with_views, cheap):
    plans = json.loads((blobs_with_views / "plans.json").read_text())
    data = load_sample_set(blobs_with_views, plans, ["blob000", "blob001"], cheap, masks=True,
                           views=Plans(plans).views())
    assert data.sample_ids == ["blob000", "blob001", "blob000__v01", "blob000__v02", "blob001__v01", "blob001__v02"]
    assert data.versions == [[0, 2, 3], [1, 4, 5]] and data.originals == 2 and len(data) == 6
    ring = data.targets[2]
    assert ring.masks_original[2].shape == SHAPE[::-1], "v01 is a quarter turn"
    for row in range(6):
        assert mask_to_boxes(ring.masks_low_res[row, 0].numpy().astype(bool)) == [tuple(ring.boxes_low_res[row][0])]
    assert ring.boxes_original[2] == [transform_box(ring.boxes_original[0][0], SHAPE, Plans(plans).views()[0])]


def test_missing_embeddings_name_the_files_and_the_fix(blobs, cheap):
    plans = json.loads((blobs / "plans.json").read_text())
    (blobs / "embeddings" / "litemedsam" / "blob001.npy").unlink()
    with pytest.raises(AutomedsamError, match="embedding file.*blob001.npy.*automedsam_plan_and_preprocess"):
        load_sample_set(blobs, plans, ["blob000", "blob001"], cheap)


@pytest.mark.parametrize("refused", ["embeddings/litemedsam/blob001.npy", "samples/blob001.npz"])
def test_an_embedding_or_mask_this_user_may_not_read_is_named_as_refused_not_to_delete(blobs, cheap, monkeypatch,
                                                                                      refused):
    """"Delete it and rerun preprocessing" was the advice for an embedding that only needed a permission."""
    plans = json.loads((blobs / "plans.json").read_text())
    load = np.load

    def load_unless_refused(path, *args, **kwargs):
        if Path(path) == blobs / refused:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", load_unless_refused)
    with pytest.raises(AutomedsamError) as error:
        load_sample_set(blobs, plans, ["blob000", "blob001"], cheap, masks=True)
    message = str(error.value)
    assert message.startswith(f"Permission denied for {blobs / refused}: this user may not read"), message
    assert not any(advice in message for advice in ("Delete", "rerun preprocessing", "Rerun preprocessing")), message


def test_box_metrics_on_hand_made_predictions():
    prediction = np.zeros((20, 20), bool)
    prediction[2:6, 2:6] = True  # 16 px, tight box [2, 2, 5, 5]
    box_dice, inside = box_metrics(prediction, [[2, 2, 5, 9]], per_component=False)  # true box 4x8 = 32 px
    assert box_dice == pytest.approx(2 * 16 / (16 + 32)) and inside == 1.0
    prediction[15, 15] = True  # one stray pixel stretches the tight box and lands outside the true box
    box_dice, inside = box_metrics(prediction, [[2, 2, 5, 9]], per_component=False)
    assert box_dice == pytest.approx(2 * 32 / (14 * 14 + 32)) and inside == pytest.approx(16 / 17)
    box_dice, inside = box_metrics(np.zeros((20, 20), bool), [[2, 2, 5, 9]], per_component=False)
    assert box_dice == 0.0 and math.isnan(inside)


def test_a_target_left_out_on_every_boxed_validation_sample_is_named_in_a_warning():
    """Three ACDC folds of a 40-epoch walkthrough predicted no RV anywhere; their summary line gave only the mean."""
    def entry(sample: str, target: int, boxes: int, box_dice: float | None, inside: float | None) -> dict:
        return {"sample_id": sample, "target": target, "boxes": boxes, "box_dice": box_dice,
                "inside_box_fraction": inside, "dice": None}
    per_sample = [entry("a", 1, 1, 0.0, None), entry("b", 1, 1, 0.0, None), entry("c", 1, 0, None, None),
                  entry("a", 2, 1, 0.8, 1.0), entry("b", 2, 1, 0.0, None), entry("c", 2, 0, 0.0, 0.0)]
    result = ValidationResult(per_sample, {1: {"box_dice": 0.0}, 2: {"box_dice": 0.267}}, {"box_dice": 0.133})
    assert missed_targets(result) == {1: 2}  # target 2 was found once, and sample c has no box of either
    targets = [{"label": 1, "name": "RV"}, {"label": 2, "name": "MYO"}]
    lines = target_lines(result, targets)
    assert lines[0] == "Final validation box Dice per target: RV 0.000, MYO 0.267"
    assert len(lines) == 2 and "RV was predicted on none of the 2 validation sample(s)" in lines[1]
    per_sample[1] = entry("b", 1, 1, 0.3, 0.5)
    assert missed_targets(result) == {} and len(target_lines(result, targets)) == 1


# --- the training loop --------------------------------------------------------------------------------------


def test_training_writes_the_documented_outputs(roots, blobs, cheap, monkeypatch):
    starts = record_epoch_starts(monkeypatch)
    result = train_fold(DATASET, "fold0", foundation=cheap, console=quiet())
    folder = fold_dir(roots)
    assert result.fold_dir == folder and not result.already_finished
    for name in ("checkpoint_best.pt", "checkpoint_best.json", "checkpoint_final.pt", "checkpoint_final.json",
                 "log.json", "progress.png", "validation/summary.json"):
        assert (folder / name).is_file(), name
    for name in ("plans.json", "dataset.json", "fingerprint.json"):
        assert (folder.parent / name).is_file(), name
    assert not (folder / "training_state_latest.pt").exists(), "resume files are dropped once finished"
    weights = load_checkpoint(folder, "final")
    assert {key.split(".")[0] for key in weights} == {"1", "2"}
    assert len(starts) == 4 and largest_change(starts[0], weights) > MOVED, "the final weights are trained ones"
    log = json.loads((folder / "log.json").read_text())
    assert [entry["epoch"] for entry in log["epochs"]] == [1, 2, 3, 4]
    assert [entry["lr"] for entry in log["epochs"]] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    assert [entry["val"] is not None for entry in log["epochs"]] == [False, True, False, True]
    assert set(log["epochs"][1]["val"]) == {"box_dice", "inside_box_fraction", "dice"}
    assert log["epochs"][1]["val"]["dice"] is None, "the default trainer opens no mask, so it has no mask Dice"
    assert set(log["epochs"][0]["loss_terms"]) == {"empty_bce", "tightness", "box_size"}
    assert log["loss_weights"] == {"empty_bce": 1.0, "tightness": 1e-4, "box_size": 1e-2}  # the plans' weights
    assert all(math.isfinite(entry["train_loss"]) for entry in log["epochs"])
    summary = log["summary"]
    assert summary["finished"] and summary["best_epoch"] in (2, 4) and summary["train_samples"] == 4
    best = load_metadata(folder, "best")
    assert best["epoch"] == summary["best_epoch"] and best["trainer"] == "default" and best["targets"] == [1, 2]
    per_sample = json.loads((folder / "validation" / "summary.json").read_text())["metric_per_sample"]
    assert sorted((r["sample_id"], r["target"]) for r in per_sample) == [
        ("blob004", 1), ("blob004", 2), ("blob005", 1), ("blob005", 2)]
    checks = json.loads((folder / "validation" / "summary.json").read_text())["box_refinement"]
    plans = json.loads((folder.parent / "plans.json").read_text())
    assert set(checks) == {str(t["label"]) for t in plans["targets"] if refinement_applies(t)}
    for check in checks.values():
        assert {r["sample_id"] for r in check["per_sample"]} <= {"blob004", "blob005"}
        assert all(v is None or 0.0 <= v <= 1.0 for r in check["per_sample"] for v in (r["learned"], r["refined"]))
    looks = json.loads((folder / "validation" / "summary.json").read_text())["second_look"]
    assert looks == {}, "plans without the labelled objects' size (planned before the second look) get no check"


def scripted_validation(samples: SampleSet, targets: list[dict], box_dice: float) -> ValidationResult:
    """What validate returns when every prediction of every target scores `box_dice`, built as validate builds it."""
    per_sample = [{"sample_id": sample_id, "target": int(target["label"]),
                   "boxes": len(samples.targets[int(target["label"])].boxes_original[index]),
                   "box_dice": box_dice, "inside_box_fraction": 1.0, "dice": None}
                  for target in targets for index, sample_id in enumerate(samples.sample_ids)]
    mean = {"box_dice": box_dice, "inside_box_fraction": 1.0, "dice": None}
    return ValidationResult(per_sample, {int(target["label"]): dict(mean) for target in targets}, mean)


def test_checkpoint_best_holds_the_weights_and_metrics_of_the_best_validated_epoch(roots, cheap, monkeypatch):
    """The best box Dice (0.9, epoch 4) chooses checkpoint_best: neither the first nor the last validation, nor the
    worst; its weights are those validated then, not the final ones the epochs after it moved on to."""
    plans = make_plans([ELLIPSE, RING], epochs=6, val_every=2)
    plans["training"]["lr_step_epoch"] = 6  # no lr drop before the end: epochs 5 and 6 move the weights a full step
    write_preprocessed(roots["preprocessed"], plans, n_samples=6, n_train=4)
    scores, validated = iter([0.2, 0.9, 0.4]), []

    def scripted(modules, foundation, samples, targets, device):
        validated.append(modules_state_dict(modules))
        return scripted_validation(samples, targets, next(scores))

    monkeypatch.setattr(trainer_module, "validate", scripted)
    result = train_fold(DATASET, 0, foundation=cheap, console=quiet())
    assert len(validated) == 3, "validated at epochs 2, 4 and 6"
    best_metrics = {"box_dice": 0.9, "inside_box_fraction": 1.0, "dice": None}
    assert result.summary["best_epoch"] == 4 and result.summary["best_val"] == best_metrics
    best = load_metadata(result.fold_dir, "best")
    assert best["epoch"] == 4 and best["metrics"] == best_metrics
    assert load_metadata(result.fold_dir, "final")["metrics"]["box_dice"] == 0.4
    best_weights, final = load_checkpoint(result.fold_dir, "best"), load_checkpoint(result.fold_dir, "final")
    assert best_weights.keys() == validated[1].keys()
    assert all(torch.equal(best_weights[key], validated[1][key]) for key in best_weights), "epoch 4's weights"
    assert largest_change(best_weights, final) > MOVED, "epochs 5 and 6 trained on after the best"


@pytest.mark.parametrize("flags, auto", [(frozenset({"avx512f"}), None),
                                         (frozenset({"avx512f", "avx512_bf16"}), torch.bfloat16),
                                         (frozenset({"amx_bf16"}), torch.bfloat16)])
def test_training_precision_auto_is_bf16_where_the_cpu_computes_it_and_fp32_or_bf16_force_it(flags, auto,
                                                                                          monkeypatch):
    monkeypatch.setattr("automedsam.device.cpu_flags", lambda: flags)
    cpu = torch.device("cpu")
    assert training_autocast(cpu) == auto
    assert training_autocast(cpu, "fp32") is None
    assert training_autocast(cpu, "bf16") == torch.bfloat16
    with pytest.raises(AutomedsamError, match="Unknown training precision 'fp8'"):
        training_autocast(cpu, "fp8")


def test_the_training_precision_is_recorded_with_the_run(roots, blobs, cheap, monkeypatch):
    autocasts = []
    real_epoch = trainer_module.train_epoch

    def recording_epoch(*args, **kwargs):
        autocasts.append(kwargs["autocast"])
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_epoch", recording_epoch)
    result = train_fold(DATASET, 0, epochs=1, precision="bf16", foundation=cheap, console=quiet())
    assert autocasts == [torch.bfloat16] and result.summary["precision"] == "bf16"
    assert load_metadata(fold_dir(roots), "final")["precision"] == "bf16"
    result = train_fold(DATASET, 0, epochs=1, overwrite=True, precision="fp32", foundation=cheap, console=quiet())
    assert autocasts == [torch.bfloat16, None] and result.summary["precision"] == "fp32"


def test_a_given_foundation_decides_the_device_unless_one_is_asked_for(roots, blobs, cheap, monkeypatch):
    """On a GPU machine 'auto' means CUDA; a caller's CPU foundation model must then not be fed CUDA tensors."""
    import automedsam.distributed
    chosen = automedsam.distributed.resolve_device
    monkeypatch.setattr(automedsam.distributed, "resolve_device",
                        lambda name: torch.device("cuda") if name is None else chosen(name))
    result = train_fold(DATASET, "fold0", epochs=1, foundation=cheap, console=quiet())
    assert result.summary["finished"]
    elsewhere = CheapFoundation()
    elsewhere.device = torch.device("meta")
    with pytest.raises(AutomedsamError, match="foundation model given is on meta but training was asked to run on cpu"):
        train_fold(DATASET, "fold1", device="cpu", foundation=elsewhere, console=quiet())
    assert not fold_dir(roots, fold="fold_1").exists()


def test_rerun_of_a_started_fold_needs_c_or_overwrite(roots, blobs, cheap):
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    with pytest.raises(AutomedsamError, match="already finished.*--c.*--overwrite"):
        train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    again = train_fold(DATASET, 0, epochs=1, resume=True, foundation=cheap, console=quiet())
    assert again.already_finished and again.summary["epochs"] == 1
    redone = train_fold(DATASET, 0, epochs=2, overwrite=True, foundation=cheap, console=quiet())
    assert redone.summary["epochs"] == 2 and not redone.already_finished


def drop_embedding(sample_id: str):
    return lambda roots: (roots["preprocessed"] / DATASET / "embeddings" / "litemedsam" / f"{sample_id}.npy").unlink()


def name_an_unknown_optimizer(roots) -> None:
    """In the plans the model was copied with too: edited alike, they are the same plans, so nothing moves."""
    for plans_file in (roots["preprocessed"] / DATASET / "plans.json", fold_dir(roots).parent / "plans.json"):
        plans = json.loads(plans_file.read_text())
        plans["training"]["optimizer"] = "sgd"
        plans_file.write_text(json.dumps(plans))


@pytest.mark.parametrize("damage, refused", [(drop_embedding("blob001"), r"embedding file.*blob001\.npy"),
                                             (drop_embedding("blob005"), r"embedding file.*blob005\.npy"),
                                             (name_an_unknown_optimizer, "Optimizer 'sgd'")],
                         ids=["training sample", "validation sample", "optimizer"])
def test_overwrite_keeps_the_fold_when_the_new_run_cannot_start(roots, blobs, cheap, damage, refused):
    """--overwrite deleted the finished fold before the new run read its embeddings and built its optimiser: a
    missing embedding lost the fold, and prediction went on with the other folds without a word."""
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    weights = (fold_dir(roots) / "checkpoint_final.pt").read_bytes()
    damage(roots)
    with pytest.raises(AutomedsamError, match=refused):
        train_fold(DATASET, 0, epochs=1, overwrite=True, foundation=cheap, console=quiet())
    assert (fold_dir(roots) / "checkpoint_final.pt").read_bytes() == weights
    assert not (roots["results"] / DATASET / "previous").exists()


def test_the_train_command_with_overwrite_keeps_the_fold_when_an_embedding_is_missing(roots, blobs, cheap,
                                                                                     monkeypatch, capsys):
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    drop_embedding("blob001")(roots)
    code, stderr = run_main(monkeypatch, capsys, "901", "0", "--epochs", "1", "--overwrite", "--device", "cpu")
    assert code == 2 and "1 embedding file(s) missing" in stderr and "Traceback" not in stderr
    assert is_complete(fold_dir(roots), "final")


def test_a_fold_overwrite_may_not_delete_is_named_with_the_entry_refused(roots, blobs, cheap, monkeypatch, capsys):
    """shutil named the bare file ("Permission denied for log.json"), not the fold it was deleting."""
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    real_unlink = os.unlink

    def refused(path, *args, **kwargs):
        if os.path.basename(path) == "log.json":
            raise PermissionError(errno.EACCES, "Permission denied", os.path.basename(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", refused)
    code, stderr = run_main(monkeypatch, capsys, "901", "0", "--epochs", "1", "--overwrite", "--device", "cpu")
    assert code == 2 and "Traceback" not in stderr
    assert f"Cannot delete {fold_dir(roots)} ({fold_dir(roots) / 'log.json'}): Permission denied." in stderr


def test_c_with_other_epochs_than_a_finished_fold_ran_is_refused_not_answered_nothing_to_continue(roots, blobs,
                                                                                                  cheap):
    """`--c --epochs 3` on a fold finished after 1 epoch said "nothing to continue" and exited 0, the fold still
    trained for 1 epoch: the user asked for a longer run and was told, in effect, that it was done."""
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    log_path = fold_dir(roots) / "log.json"
    logged = log_path.read_text()
    with pytest.raises(AutomedsamError, match=r"fold_0 is already finished, with other settings than this command "
                                              r"asks for: epochs: finished run 1, this command 3 .*--c does not "
                                              r"extend a finished run: pass --overwrite") as refused:
        train_fold(DATASET, 0, epochs=3, resume=True, foundation=cheap, console=quiet())
    assert "lr_step_epoch: finished run 1, this command 2 (follows --epochs)" in str(refused.value)
    assert log_path.read_text() == logged
    for epochs in (1, None):  # the run's own length, or none asked (the plans say 4): nothing to continue
        again = train_fold(DATASET, 0, epochs=epochs, resume=True, foundation=cheap, console=quiet())
        assert again.already_finished and again.summary["epochs"] == 1


def test_c_with_other_epochs_than_an_installed_fold_ran_is_refused(roots, cheap, monkeypatch, tmp_path):
    """An installed fold has no checkpoint_final.json recording its configuration: its log gives its length."""
    plans = {**make_plans([ELLIPSE, RING]), "normalization": {"scheme": "percentile_window", "lower": 0.0,
                                                              "upper": 1.0, "reason": "test"}}  # one install reads
    write_preprocessed(roots["preprocessed"], plans, n_samples=6, n_train=4)
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    export_model(fold_dir(roots).parent, tmp_path / "model.zip", folds=[0])
    monkeypatch.setenv("AUTOMEDSAM_RESULTS", str(tmp_path / "installed"))
    install_model(tmp_path / "model.zip")
    installed = tmp_path / "installed" / DATASET / "default__automedsamPlans" / "fold_0"
    assert not (installed / "checkpoint_final.json").exists()
    with pytest.raises(AutomedsamError, match=r"already finished.*epochs: finished run 1, this command 3 .*"
                                              r"pass --overwrite"):
        train_fold(DATASET, 0, epochs=3, resume=True, foundation=cheap, console=quiet())
    assert train_fold(DATASET, 0, epochs=1, resume=True, foundation=cheap, console=quiet()).already_finished


def test_a_fold_trained_on_other_samples_than_splits_json_gives_it_is_named_out_of_date(roots, blobs, cheap):
    """After a review adds a sample, the finished folds' models are stale: the rerun the annotation guide gives must
    say so, and --c must not continue a run on a changed sample set."""
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    assert load_metadata(fold_dir(roots), "final")["samples"]["train"]
    splits_path = roots["preprocessed"] / DATASET / "splits.json"
    original = json.loads(splits_path.read_text())
    grown = json.loads(json.dumps(original))
    grown["labelled"].append("blob_added_in_review")
    grown["folds"][0]["train"].append("blob_added_in_review")
    splits_path.write_text(json.dumps(grown))
    for resume in (False, True):
        with pytest.raises(AutomedsamError, match=r"trained on 4 samples, but splits.json now gives this fold 5 "
                                                  r"\(added: blob_added_in_review\).*--overwrite"):
            train_fold(DATASET, 0, epochs=1, resume=resume, foundation=cheap, console=quiet())
    moved = json.loads(json.dumps(original))
    moved["folds"][0]["train"].append(moved["folds"][0]["val"].pop())
    splits_path.write_text(json.dumps(moved))
    with pytest.raises(AutomedsamError, match=r"\(moved between training and validation\)"):
        train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    redone = train_fold(DATASET, 0, epochs=1, overwrite=True, foundation=cheap, console=quiet())
    assert load_metadata(redone.fold_dir, "final")["samples"]["train"] == moved["folds"][0]["train"]


def test_a_fold_whose_samples_splits_json_lists_in_another_order_is_not_out_of_date(roots, blobs, cheap):
    """The same samples in another order (splits.json rewritten by hand or by a tool) are the same fold: --c must
    find it finished, not refuse it as moved between training and validation."""
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    splits_path = roots["preprocessed"] / DATASET / "splits.json"
    reordered = json.loads(splits_path.read_text())
    reordered["folds"][0]["train"].reverse()
    assert len(reordered["folds"][0]["train"]) > 1
    splits_path.write_text(json.dumps(reordered))
    again = train_fold(DATASET, 0, epochs=1, resume=True, foundation=cheap, console=quiet())
    assert again.already_finished


def test_a_fold_holding_an_unlabelled_sample_is_refused_before_any_fold_is_written(roots, blobs, cheap):
    """With --embed-all an unlabelled sample is on disk with no boxes: a hand-edited fold holding it trained and
    validated on it as an object absent."""
    splits_path = blobs / "splits.json"
    splits = json.loads(splits_path.read_text())
    splits["labelled"].remove("blob005")
    splits_path.write_text(json.dumps(splits))
    with pytest.raises(AutomedsamError, match=r"folds\[0\].val holds blob005, which labelled lacks"):
        train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    assert not fold_dir(roots).exists()


def edit_views(folder: Path, edit) -> None:
    """plans.json's augmentation views edited by hand, and not preprocessed since."""
    plans = json.loads((folder / "plans.json").read_text())
    edit(plans["augmentation"]["views"])
    (folder / "plans.json").write_text(json.dumps(plans))


@pytest.mark.parametrize("edit, message", [
    (lambda views: views[0].update(gamma=0.5), r"augmentation views v01 were made under other plans.*"),
    (lambda views: views.append({"name": "v03", "rot90": 2}),
     r"sample file\(s\) missing in .*blob000__v03.*Run automedsam_plan_and_preprocess -d \S+ "),
], ids=["view-changed", "view-added"])
def test_views_made_under_another_view_spec_are_refused_before_any_fold_is_written(roots, blobs_with_views, cheap,
                                                                                    edit, message):
    """A view's gamma edited under the same name trained on the samples and embeddings of the old gamma; a view
    added and not preprocessed yet is missing, not made under other plans."""
    edit_views(blobs_with_views, edit)
    with pytest.raises(AutomedsamError, match=f"{message}--preprocess-only"):
        train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    assert not fold_dir(roots).exists()


def test_a_plan_only_run_is_reported_as_not_preprocessed_yet(roots, blobs_with_views, cheap):
    """After --plan-only no view was written: training said they were made under other plans. The fix keeps the
    draw: --preprocess-only (a replan draws again from the defaults), a replan for a page-annotated dataset (whose
    boxes changed the raw data, which --preprocess-only refuses; its replan keeps the recorded draw)."""
    for path in (blobs_with_views / "samples").glob("*__v*"):
        path.unlink()
    with pytest.raises(AutomedsamError) as refused:
        train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    assert "missing" in str(refused.value) and "made under other plans" not in str(refused.value)
    assert f"automedsam_plan_and_preprocess -d {DATASET} --preprocess-only to finish" in str(refused.value)
    splits_path = blobs_with_views / "splits.json"
    splits = json.loads(splits_path.read_text())
    splits["interactive"] = {"order": splits["labelled"], "rejected": [], "added": [], "to_annotate": []}
    splits_path.write_text(json.dumps(splits))
    with pytest.raises(AutomedsamError, match=f"automedsam_plan_and_preprocess -d {DATASET} to finish"):
        train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())


def test_a_trainer_without_views_trains_where_an_edited_view_is_not_preprocessed_yet(roots, blobs_with_views, cheap):
    """paper2024 never reads views, yet the check of the edited view refused it."""
    edit_views(blobs_with_views, lambda views: views[0].update(gamma=0.5))
    train_fold(DATASET, 0, trainer="paper2024", epochs=1, foundation=cheap, console=quiet())
    assert (fold_dir(roots, trainer="paper2024") / "checkpoint_final.pt").is_file()


def test_views_no_longer_planned_are_left_unread(roots, blobs_with_views, cheap, monkeypatch):
    """v02 dropped from the plans and not preprocessed since: its files stay on disk, but training neither loads nor
    draws it, while the view still planned is drawn."""
    edit_views(blobs_with_views, lambda views: views.pop())
    assert (blobs_with_views / "samples" / "blob000__v02.json").is_file()
    loaded, drawn = set(), []
    real_epoch = trainer_module.train_epoch

    def recording_epoch(modules, foundation, loss_fn, optimizer, scaler, data, rows, *args, **kwargs):
        loaded.update(data.sample_ids)
        drawn.extend(data.sample_ids[row] for row in rows)
        return real_epoch(modules, foundation, loss_fn, optimizer, scaler, data, rows, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_epoch", recording_epoch)
    train_fold(DATASET, 0, epochs=3, foundation=cheap, console=quiet())
    assert {sample_id.partition("__")[2] for sample_id in loaded} == {"", "v01"}
    assert {row.partition("__")[2] for row in drawn} == {"", "v01"}


def test_plans_reworded_by_an_upgrade_are_the_same_plans_for_the_folds_trained(roots, blobs, cheap):
    """A reason's words changed by a new version made every trained model 'trained with other plans': the next fold
    was refused, and --overwrite moved the model aside, though no choice had changed."""
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    plans_path = roots["preprocessed"] / DATASET / "plans.json"
    plans = json.loads(plans_path.read_text())
    plans["training"]["reason"] = "the same schedule in a new version's words"
    plans_path.write_text(json.dumps(plans))
    train_fold(DATASET, 1, epochs=1, foundation=cheap, console=quiet())
    model = fold_dir(roots).parent
    assert sorted(path.name for path in model.glob("fold_*")) == ["fold_0", "fold_1"]
    assert json.loads((model / "plans.json").read_text()) == plans
    assert not (roots["results"] / DATASET / "previous").exists()


def test_replanned_folds_are_trained_with_overwrite_and_the_previous_model_is_kept_whole(roots, blobs, cheap):
    """After a review added samples, plan_and_preprocess changed the plans (the margins of the larger labelled set)
    and `automedsam_train D F --overwrite`, the command annotating.md gives, was refused: "holds folds trained with
    other plans ... Move or delete that results folder"."""
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    plans_path = roots["preprocessed"] / DATASET / "plans.json"
    old_plans = json.loads(plans_path.read_text())
    new_plans = json.loads(plans_path.read_text())
    new_plans["training"]["epochs"] += 1
    plans_path.write_text(json.dumps(new_plans))
    with pytest.raises(AutomedsamError,
                       match=r"trained with other plans.*differ in training\.epochs:.*Pass --overwrite"):
        train_fold(DATASET, 1, epochs=1, foundation=cheap, console=quiet())
    assert (fold_dir(roots) / "checkpoint_final.pt").is_file()
    train_fold(DATASET, 1, epochs=1, overwrite=True, foundation=cheap, console=quiet())
    model = fold_dir(roots).parent
    assert json.loads((model / "plans.json").read_text()) == new_plans
    assert sorted(path.name for path in model.glob("fold_*")) == ["fold_1"]

    previous = roots["results"] / DATASET / "previous" / f"{model.name}_1"
    assert json.loads((previous / "plans.json").read_text()) == old_plans
    assert open_model_folder(previous, folds=None).folds == (0,)
    assert locate_model_folder(DATASET) == model  # the moved model is no second candidate
    train_fold(DATASET, 0, epochs=1, overwrite=True, foundation=cheap, console=quiet())  # same plans: nothing moves
    assert sorted(path.name for path in (roots["results"] / DATASET / "previous").iterdir()) == [f"{model.name}_1"]
    new_plans["training"]["epochs"] += 1  # replanned again: a fold of the moved model is retrained first
    plans_path.write_text(json.dumps(new_plans))
    train_fold(DATASET, 0, epochs=1, overwrite=True, foundation=cheap, console=quiet())  # its folder moved with it
    assert sorted(path.name for path in model.glob("fold_*")) == ["fold_0"]


@contextmanager
def held_by_another_process(model_dir: Path, fold: str) -> Iterator[None]:
    """The fold's training lock, as another automedsam_train (or the annotation page's Train) holds it."""
    path = fold_lock_path(model_dir, fold)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def test_a_fold_being_trained_elsewhere_is_not_trained_over(roots, blobs, cheap):
    """The page's Train and a terminal's automedsam_train on the same fold wrote into one folder at once."""
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    before = (fold_dir(roots) / "checkpoint_final.pt").read_bytes()
    with held_by_another_process(fold_dir(roots).parent, "fold_0"):
        with pytest.raises(AutomedsamError, match="fold_0 .* is being trained by another process"):
            train_fold(DATASET, 0, epochs=1, overwrite=True, foundation=cheap, console=quiet())
    assert (fold_dir(roots) / "checkpoint_final.pt").read_bytes() == before
    train_fold(DATASET, 0, epochs=1, overwrite=True, foundation=cheap, console=quiet())  # once it has ended


def trained_then_replanned(roots, cheap) -> Path:
    """Fold 0 trained, then the plans changed (one more epoch): the model folder, trained with the old plans."""
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    plans_path = roots["preprocessed"] / DATASET / "plans.json"
    new_plans = json.loads(plans_path.read_text())
    new_plans["training"]["epochs"] += 1
    plans_path.write_text(json.dumps(new_plans))
    return fold_dir(roots).parent


def test_the_previous_model_is_not_moved_while_one_of_its_folds_trains(roots, blobs, cheap):
    """Retraining fold 1 with new plans moved the model away while fold 3 of it was still training elsewhere, which
    then wrote into the new model's folder."""
    model = trained_then_replanned(roots, cheap)
    with held_by_another_process(model, "fold_3"):
        with pytest.raises(AutomedsamError, match="fold_3 .* is being trained by another process"):
            train_fold(DATASET, 1, epochs=1, overwrite=True, foundation=cheap, console=quiet())
    assert (model / "fold_0" / "checkpoint_final.pt").is_file()
    assert not (roots["results"] / DATASET / "previous").exists()
    train_fold(DATASET, 1, epochs=1, overwrite=True, foundation=cheap, console=quiet())
    assert (roots["results"] / DATASET / "previous" / f"{model.name}_1" / "fold_0").is_dir()


def test_the_page_keeps_the_previous_model_whole_unless_one_of_its_folds_trains(roots, blobs, cheap):
    """Train on the annotation page retrains every fold: with unchanged plans, --overwrite alone replaced the
    folds in place, and a worse retrained model could not be compared with, or exchanged for, the one before."""
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    model = fold_dir(roots).parent
    with held_by_another_process(model, "fold_2"):
        with pytest.raises(AutomedsamError, match="fold_2 .* is being trained by another process"):
            keep_previous(model)
    assert (model / "fold_0" / "checkpoint_final.pt").is_file()
    moved = keep_previous(model)
    assert moved == roots["results"] / DATASET / "previous" / f"{model.name}_1"
    assert (moved / "fold_0" / "checkpoint_final.pt").is_file() and not model.exists()
    assert keep_previous(model) is None


@pytest.mark.parametrize("dataset", ["blobs", "blobs_with_views"])
def test_resume_after_an_interruption_gives_the_uninterrupted_weights(roots, dataset, cheap, monkeypatch, request):
    request.getfixturevalue(dataset)
    real_epoch = trainer_module.train_epoch
    starts = record_epoch_starts(monkeypatch)
    train_fold(DATASET, "all", precision="fp32", foundation=cheap, console=quiet())
    uninterrupted = load_checkpoint(fold_dir(roots, fold="fold_all"), "final")
    assert largest_change(starts[0], uninterrupted) > MOVED, "equal weights must not be two untrained starts"

    monkeypatch.setenv("AUTOMEDSAM_RESULTS", str(roots["results"].parent / "results_interrupted"))
    calls = []

    def interrupted_at_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_epoch", interrupted_at_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train_fold(DATASET, "all", precision="fp32", foundation=cheap, console=quiet())
    monkeypatch.setattr(trainer_module, "train_epoch", real_epoch)
    folder = roots["results"].parent / "results_interrupted" / DATASET / "default__automedsamPlans" / "fold_all"
    assert (folder / "training_state_latest.pt").is_file() and not (folder / "checkpoint_final.pt").exists()
    with pytest.raises(AutomedsamError, match="interrupted run"):
        train_fold(DATASET, "all", foundation=cheap, console=quiet())
    with pytest.raises(AutomedsamError, match="another configuration"):
        train_fold(DATASET, "all", epochs=6, resume=True, precision="fp32", foundation=cheap, console=quiet())
    with pytest.raises(AutomedsamError, match="trained in fp32.*--precision fp32"):
        train_fold(DATASET, "all", resume=True, precision="bf16", foundation=cheap, console=quiet())

    resumed_epochs = []

    def counted(*args, **kwargs):
        resumed_epochs.append(1)
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_epoch", counted)
    train_fold(DATASET, "all", resume=True, precision="fp32", foundation=cheap, console=quiet())
    assert len(resumed_epochs) == 2, "epochs 3 and 4 only: a seeded restart from epoch 1 gives the same weights"
    resumed = load_checkpoint(folder, "final")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[key], uninterrupted[key]) for key in resumed)
    log = json.loads((folder / "log.json").read_text())
    assert [entry["epoch"] for entry in log["epochs"]] == [1, 2, 3, 4]
    assert log["summary"]["best_epoch"] == 4 and log["summary"]["best_val"] is None, "fold all: best = final"


def interrupt_at_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    real_epoch, calls = trainer_module.train_epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_epoch", interrupted)


def test_a_run_stopped_before_its_first_saved_epoch_starts_again_without_c(roots, blobs, cheap, monkeypatch):
    """Stopped after epoch 1 (its log written, no resume file yet): without --c "holds an interrupted run, pass --c",
    with --c "nothing to resume, run without --c": only --overwrite got out."""
    real_epoch = trainer_module.train_epoch
    interrupt_at_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train_fold(DATASET, 0, epochs=4, foundation=cheap, console=quiet())
    monkeypatch.setattr(trainer_module, "train_epoch", real_epoch)
    folder = fold_dir(roots)
    assert (folder / "log.json").is_file() and not (folder / "training_state_latest.pt").exists()
    with pytest.raises(AutomedsamError, match="Nothing to resume.*without --c"):
        train_fold(DATASET, 0, epochs=4, resume=True, foundation=cheap, console=quiet())
    result = train_fold(DATASET, 0, epochs=4, foundation=cheap, console=quiet())
    assert [entry["epoch"] for entry in json.loads((folder / "log.json").read_text())["epochs"]] == [1, 2, 3, 4]
    assert result.summary["epochs"] == 4


def test_c_continues_neither_fold_all_on_changed_samples_nor_a_fold_of_changed_plans(roots, blobs, cheap,
                                                                                    monkeypatch):
    """Fold all records its samples only at its end: --c went on with a sample added in review. A finished fold
    answered --c with "nothing to continue" after the plans had changed, as if it were up to date."""
    real_epoch = trainer_module.train_epoch
    interrupt_at_epoch(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        train_fold(DATASET, "all", epochs=4, foundation=cheap, console=quiet())
    monkeypatch.setattr(trainer_module, "train_epoch", real_epoch)
    assert (fold_dir(roots, fold="fold_all") / "training_state_latest.pt").is_file()
    splits_path = roots["preprocessed"] / DATASET / "splits.json"
    grown = json.loads(splits_path.read_text())
    grown["labelled"].append("blob_added_in_review")
    splits_path.write_text(json.dumps(grown))
    with pytest.raises(AutomedsamError, match=r"splits.json now gives this fold .*added: blob_added_in_review"):
        train_fold(DATASET, "all", epochs=4, resume=True, foundation=cheap, console=quiet())
    train_fold(DATASET, 0, epochs=1, foundation=cheap, console=quiet())
    plans_path = roots["preprocessed"] / DATASET / "plans.json"
    plans = json.loads(plans_path.read_text())
    plans["training"]["epochs"] += 1
    plans_path.write_text(json.dumps(plans))
    with pytest.raises(AutomedsamError, match=r"trained with other plans.*Pass --overwrite"):
        train_fold(DATASET, 0, epochs=1, resume=True, foundation=cheap, console=quiet())


def step_scheduler(config, optimizer) -> torch.optim.lr_scheduler.StepLR:
    """The scheduler of the versions before the one-drop fix, whose training states a --c may still find."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step_epoch, gamma=config.lr_gamma)


def test_a_shortened_run_drops_the_lr_once_also_when_continued_from_a_state_saved_before(roots, blobs, cheap,
                                                                                        monkeypatch):
    """`automedsam_train 1 fold0 --epochs 5` puts the drop after epoch 2 (half of 5, rounded) and StepLR dropped
    again after epoch 4: the run ended at a hundredth of its lr, where the documentation promises one drop."""
    one_drop = pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-4])
    real_epoch, real_scheduler = trainer_module.train_epoch, trainer_module._scheduler
    interrupt_at_epoch(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        train_fold(DATASET, 0, epochs=5, foundation=cheap, console=quiet())
    saved = load_training_state(fold_dir(roots), "cpu")["scheduler"]
    assert saved["last_epoch"] == 4 and not any(isinstance(value, Counter) for value in saved.values()), \
        "torch before 2.4 refuses a Counter (MultiStepLR's milestones) with weights_only"
    monkeypatch.setattr(trainer_module, "train_epoch", real_epoch)
    result = train_fold(DATASET, 0, epochs=5, resume=True, foundation=cheap, console=quiet())
    assert [entry["lr"] for entry in json.loads((result.fold_dir / "log.json").read_text())["epochs"]] == one_drop

    monkeypatch.setattr(trainer_module, "_scheduler", step_scheduler)
    interrupt_at_epoch(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        train_fold(DATASET, 1, epochs=5, foundation=cheap, console=quiet())
    monkeypatch.setattr(trainer_module, "train_epoch", real_epoch)
    monkeypatch.setattr(trainer_module, "_scheduler", real_scheduler)
    result = train_fold(DATASET, 1, epochs=5, resume=True, foundation=cheap, console=quiet())
    assert [entry["lr"] for entry in json.loads((result.fold_dir / "log.json").read_text())["epochs"]] == one_drop


def test_validation_decodes_as_prediction_does_whatever_the_training_precision(roots, blobs, monkeypatch):
    """Trained in bf16 with the decoder planned in fp32, validation ran under the training's bf16 autocast: the best
    checkpoint and the final validation measured a computation prediction never runs."""
    calls: list[tuple[bool, bool]] = []

    class Recording(CheapFoundation):
        def decode(self, embeddings, sparse, dense):
            calls.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
            return super().decode(embeddings, sparse, dense)

    train_fold(DATASET, 0, epochs=2, precision="bf16", foundation=Recording(), console=quiet())
    trained = [autocast for gradients, autocast in calls if gradients]
    gradient_free = [autocast for gradients, autocast in calls if not gradients]
    assert trained and all(trained), "training itself runs in bf16"
    assert gradient_free and not any(gradient_free), "validation runs in the planned fp32, as prediction does"


def test_a_run_trained_in_fp16_is_continued_with_an_option_the_command_takes(roots, blobs, cheap, monkeypatch):
    """A GPU without bf16 trains in fp16 (auto, or bf16); --c in another precision said "--precision fp16", a value
    the command refuses."""
    real_epoch = trainer_module.train_epoch
    interrupt_at_epoch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train_fold(DATASET, 0, epochs=4, precision="fp32", foundation=cheap, console=quiet())
    monkeypatch.setattr(trainer_module, "train_epoch", real_epoch)
    path = fold_dir(roots) / "training_state_latest.pt"
    state = torch.load(path, weights_only=True)
    state["progress"]["precision"] = "fp16"  # as a GPU without bf16 records it
    torch.save(state, path)
    with pytest.raises(AutomedsamError, match="trained in fp16") as refused:
        train_fold(DATASET, 0, epochs=4, resume=True, precision="fp32", foundation=cheap, console=quiet())
    assert "--precision auto on a GPU without bf16" in str(refused.value)
    assert "--precision fp16" not in str(refused.value)


def test_a_run_continued_after_its_last_epoch_without_its_log_finishes_with_its_summary(roots, blobs, cheap,
                                                                                       monkeypatch, capsys):
    """Stopped after the last epoch's state was saved, and log.json gone: --c trains no epoch, so there is no time
    per epoch, and the summary line raised TypeError on it."""
    real_check = trainer_module.refinement_check

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "refinement_check", stopped)
    with pytest.raises(KeyboardInterrupt):
        train_fold(DATASET, 0, epochs=2, foundation=cheap, console=quiet())
    monkeypatch.setattr(trainer_module, "refinement_check", real_check)
    (fold_dir(roots) / "log.json").unlink()
    result = train_fold(DATASET, 0, epochs=2, resume=True, foundation=cheap, console=Console(width=300))
    assert result.summary["time_per_epoch_s"] is None
    assert "(n/a s/epoch)" in capsys.readouterr().out


def test_views_are_drawn_for_training_samples_only_and_paper2024_never_draws_them(roots, blobs_with_views, cheap,
                                                                                   monkeypatch):
    trained, validated = [], []
    real_epoch, real_validate = trainer_module.train_epoch, trainer_module.validate

    def recording_epoch(modules, foundation, loss_fn, optimizer, scaler, data, rows, *args, **kwargs):
        trained.append([data.sample_ids[row] for row in rows])
        return real_epoch(modules, foundation, loss_fn, optimizer, scaler, data, rows, *args, **kwargs)

    def recording_validate(modules, foundation, samples, *args):
        validated.extend(samples.sample_ids)
        return real_validate(modules, foundation, samples, *args)

    monkeypatch.setattr(trainer_module, "train_epoch", recording_epoch)
    monkeypatch.setattr(trainer_module, "validate", recording_validate)
    train_ids = {"blob000", "blob001", "blob002", "blob003"}
    result = train_fold(DATASET, 0, epochs=6, foundation=cheap, console=quiet())
    assert result.summary["train_samples"] == 4 and len(trained) == 6
    for rows in trained:  # one pass over the samples per epoch, each as itself or one of its views
        assert sorted(row.split("__")[0] for row in rows) == sorted(train_ids)
    drawn = [row for rows in trained for row in rows]
    assert {row.partition("__")[2] for row in drawn} == {"", "v01", "v02"}
    assert validated and set(validated) == {"blob004", "blob005"}, "validation never sees a view"

    trained.clear()
    train_fold(DATASET, 1, trainer="paper2024", epochs=2, foundation=cheap, console=quiet())
    assert len(trained) == 2 and all(set(rows) == train_ids for rows in trained)
    trained.clear()
    log = json.loads((train_fold(DATASET, 2, trainer="fullsup", epochs=1, foundation=cheap, console=quiet())
                      .fold_dir / "log.json").read_text())
    assert set(log["epochs"][0]["loss_terms"]) == {"supervised"} and any("__v" in row for row in trained[0])


def test_fullsup_refuses_a_dataset_without_masks(roots, cheap):
    write_preprocessed(roots["preprocessed"], make_plans([ELLIPSE]), n_samples=5, n_train=3, with_masks=False)
    with pytest.raises(AutomedsamError, match="fullsup.*without"):
        train_fold(DATASET, 0, trainer="fullsup", foundation=cheap, console=quiet())


@pytest.mark.slow  # the same run on the cheap decoder is in test_views_are_drawn_...; this one uses LiteMedSAM's
def test_fullsup_runs_on_masks(roots, blobs, foundation):
    result = train_fold(DATASET, 1, trainer="fullsup", epochs=1, foundation=foundation, console=quiet())
    log = json.loads((result.fold_dir / "log.json").read_text())
    assert set(log["epochs"][0]["loss_terms"]) == {"supervised"}


# --- learning on real LiteMedSAM embeddings -----------------------------------------------------------------


@pytest.fixture(scope="module")
def real_blobs(tmp_path_factory, foundation):
    root = tmp_path_factory.mktemp("preprocessed_real")
    return write_preprocessed(root, make_plans([ELLIPSE], epochs=16, val_every=4, center_channels=32),
                              n_samples=8, n_train=5, foundation=foundation, seed=3)


@pytest.mark.slow
def test_validation_dice_rises_well_above_its_start(roots, real_blobs, foundation, monkeypatch):
    monkeypatch.setenv("AUTOMEDSAM_PREPROCESSED", str(real_blobs.parent))
    plans = json.loads((real_blobs / "plans.json").read_text())
    train_set = load_sample_set(real_blobs, plans, [f"blob{i:03d}" for i in range(5)], foundation)
    val_set = load_sample_set(real_blobs, plans, ["blob005", "blob006", "blob007"], foundation, masks=True)
    torch.manual_seed(plans["training"]["seed"])
    untrained = build_prompt_module(plans)
    assert start_at_mean_box(untrained, foundation, train_set.targets[1].boxes_low_res)
    start = validate({1: untrained}, foundation, val_set, plans["targets"], torch.device("cpu")).mean

    result = train_fold(DATASET, 0, foundation=foundation, console=quiet())
    trained = load_modules(load_checkpoint(result.fold_dir, "final"), plans)
    final = validate(trained, foundation, val_set, plans["targets"], torch.device("cpu")).mean
    assert final["dice"] > max(0.8, start["dice"] + 0.25), (start, final)
    assert final["box_dice"] > start["box_dice"] + 0.2, (start, final)


def test_the_default_start_saturates_the_decoder_and_the_mean_box_start_does_not(tmp_path, foundation):
    folder = write_preprocessed(tmp_path, make_plans([ELLIPSE]), n_samples=2, n_train=2, foundation=foundation)
    plans = json.loads((folder / "plans.json").read_text())
    data = load_sample_set(folder, plans, ["blob000", "blob001"], foundation)
    embeddings = data.embedding_batch([0, 1], torch.device("cpu"))
    torch.manual_seed(0)
    module = build_prompt_module(plans)
    with torch.no_grad():
        saturated = foundation.decode(embeddings, *module(embeddings))
        start_at_mean_box(module, foundation, data.targets[1].boxes_low_res)
        started = foundation.decode(embeddings, *module(embeddings))
    assert saturated.max() < -5
    assert started.max() > 0 and 0 < (started > 0).float().mean() < 0.5


# --- the command line ---------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "automedsam_train"), *args], capture_output=True, text=True, timeout=300)


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """The console script's main() in this process: (exit code, stderr as one line)."""
    monkeypatch.setattr(sys, "argv", ["automedsam_train", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, " ".join(capsys.readouterr().err.split())


def test_cli_help_explains_and_gives_examples():
    done = run_cli("--help")
    assert done.returncode == 0
    assert "paper2024" in done.stdout and "automedsam_train 1 0" in done.stdout and "--c" in done.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["901", "fold7"], "Fold 7 does not exist: splits.json has 5 folds (0..4)"),
        (["901", "fold-7"], "Unknown fold 'fold-7'"),
        (["901", "0", "--trainer", "magic"], "Unknown trainer 'magic'"),
        (["902", "0"], "No dataset '902'"),
        (["901", "0", "--c"], "Nothing to resume"),
        (["901", "0", "--c", "--overwrite"], "contradict"),
        (["901", "0", "--precision", "fp8"], "Unknown training precision 'fp8'; use auto, fp32, bf16"),
    ],
)
def test_cli_errors_are_one_readable_line(roots, blobs, monkeypatch, capsys, args, message):
    code, stderr = run_main(monkeypatch, capsys, *args)
    assert code == 2 and message in stderr and "Traceback" not in stderr


def test_cli_says_to_preprocess_a_raw_only_dataset(roots, monkeypatch, capsys):
    (roots["raw"] / "Dataset903_Raw").mkdir()
    code, stderr = run_main(monkeypatch, capsys, "903", "0")
    assert code == 2 and "automedsam_plan_and_preprocess -d Dataset903_Raw" in stderr


def test_cli_reports_missing_embeddings(roots, blobs, monkeypatch, capsys):
    for path in (blobs / "embeddings" / "litemedsam").glob("*.npy"):
        path.unlink()
    code, stderr = run_main(monkeypatch, capsys, "Dataset901_Blobs", "all", "--device", "cpu")
    assert code == 2 and "6 embedding file(s) missing" in stderr and "automedsam_plan_and_preprocess" in stderr


@pytest.mark.slow
def test_torchrun_with_two_processes_trains_and_writes_once(roots, blobs):
    command = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", "2",
               str(VENV_BIN / "automedsam_train"), "901", "0", "--epochs", "2", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = fold_dir(roots)
    assert load_checkpoint(folder, "final").keys() == load_checkpoint(folder, "best").keys()
    log = json.loads((folder / "log.json").read_text())
    assert log["summary"]["world_size"] == 2 and [e["epoch"] for e in log["epochs"]] == [1, 2]


@pytest.mark.parametrize("key, value", [("epochs", 0), ("val_every", 0), ("lr_step_epoch", 0), ("batch_size", 0),
                                        ("lr", "fast"), ("lr_gamma", float("nan")), ("seed", -1), ("seed", "abc"),
                                        ("seed", 1.5), ("seed", True)])
def test_a_hand_edited_schedule_that_cannot_train_is_refused_before_any_fold_is_written(roots, cheap, key, value):
    """epochs 0 wrote untrained weights as a finished fold; val_every or lr_step_epoch 0 divided by zero; seed -1
    crashed numpy's seeding at epoch 1."""
    plans = make_plans([ELLIPSE, RING])
    plans["training"][key] = value
    write_preprocessed(roots["preprocessed"], plans, n_samples=6, n_train=4)
    with pytest.raises(AutomedsamError, match=f"plans.json training.{key} must be"):
        train_fold(DATASET, 0, foundation=cheap, console=quiet())
    assert not fold_dir(roots).exists()


def test_an_error_while_training_is_not_blamed_on_the_folds_lock(roots, blobs, cheap, monkeypatch):
    def lost(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "samples/blob005.npz")

    monkeypatch.setattr(trainer_module, "train_epoch", lost)
    with pytest.raises(FileNotFoundError, match="blob005"):
        train_fold(DATASET, 0, foundation=cheap, console=quiet())


def test_a_stop_while_the_finished_fold_is_plotted_leaves_a_fold_that_c_tidies(roots, blobs, cheap, monkeypatch):
    real_plot = trainer_module.plot_progress

    def stopped(log, path):
        if log.get("summary"):  # the finished fold's plot, not an epoch's
            raise KeyboardInterrupt
        real_plot(log, path)

    monkeypatch.setattr(trainer_module, "plot_progress", stopped)
    with pytest.raises(KeyboardInterrupt):
        train_fold(DATASET, 0, epochs=2, foundation=cheap, console=quiet())
    monkeypatch.setattr(trainer_module, "plot_progress", real_plot)
    folder = fold_dir(roots)
    assert json.loads((folder / "log.json").read_text())["summary"]["finished"], "the log was written before"
    assert not (folder / "training_state_latest.pt").exists() and not (folder / "checkpoint_latest.pt").exists()
    result = train_fold(DATASET, 0, epochs=2, resume=True, foundation=cheap, console=quiet())
    assert result.already_finished and result.summary["epochs"] == 2


def test_a_replanned_model_moves_before_the_fold_lock_so_parallel_folds_do_not_refuse_each_other(roots, blobs,
                                                                                                   cheap, monkeypatch):
    """Folds 0-4 started at once with --overwrite after a replan: each took its lock, then the first to move the old
    model found the others' locks and refused ("fold_0 is being trained by another process"), though they trained the
    new plans too."""
    model = trained_then_replanned(roots, cheap)
    real_lock, old_model_at_lock = trainer_module.training_fold, []

    def lock(output_dir, fold_name):
        old_model_at_lock.append((output_dir / "fold_0").exists())
        return real_lock(output_dir, fold_name)

    monkeypatch.setattr(trainer_module, "training_fold", lock)
    train_fold(DATASET, 1, epochs=1, overwrite=True, foundation=cheap, console=quiet())
    assert old_model_at_lock == [False], "a lock held by a new-plans fold would have refused the move"
    assert (roots["results"] / DATASET / "previous" / f"{model.name}_1" / "fold_0").is_dir()


def test_a_whole_number_written_as_a_float_in_the_schedule_still_trains():
    plans = make_plans([ELLIPSE, RING])
    plans["training"].update(epochs=4.0, val_every=2.0, weight_decay=0, lr=1)
    config = TRAINER_VARIANTS["default"].configure(plans)
    assert (config.epochs, config.val_every) == (4, 2) and isinstance(config.epochs, int)
