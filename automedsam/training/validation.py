"""Validation of prompt modules on a fold's held-out samples.

Box-based metrics need nothing but boxes, so a weak-label user always has them: the Dice between the
predicted mask's tight box(es) and the true box(es), and the fraction of predicted foreground inside the true
boxes. Their mean `box_dice` picks checkpoint_best. The mask Dice (at the original resolution) is reported
too when the samples have masks, but never used to choose anything.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from automedsam.boxes import mask_to_boxes, rasterise_boxes
from automedsam.evaluation import dice
from automedsam.training.loop import decode_targets

if TYPE_CHECKING:
    from automedsam.foundation.base import FoundationModel
    from automedsam.training.data import SampleSet

METRICS = ("box_dice", "inside_box_fraction", "dice")
VALIDATION_BATCH = 8


@dataclass
class ValidationResult:
    per_sample: list[dict[str, Any]]  # {"sample_id", "target", "boxes", "box_dice", "inside_box_fraction", "dice"}
    per_target: dict[int, dict[str, float | None]]
    mean: dict[str, float | None]  # over targets: what log.json shows per epoch

    @property
    def score(self) -> float | None:
        """The checkpoint selection score: mean box Dice (None when no sample defines it)."""
        return self.mean["box_dice"]

    def to_json(self) -> dict[str, Any]:
        return {
            "metric_per_sample": self.per_sample,
            "mean_per_target": {str(label): values for label, values in self.per_target.items()},
            "mean": self.mean,
        }


def box_metrics(prediction: np.ndarray, true_boxes: list[list[int]], per_component: bool) -> tuple[float, float]:
    """(box Dice, fraction of predicted foreground inside the true boxes); NaN where undefined."""
    shape = prediction.shape
    true_area = rasterise_boxes([tuple(box) for box in true_boxes], shape)
    predicted_area = rasterise_boxes(mask_to_boxes(prediction, per_component=per_component), shape)
    foreground = int(prediction.sum())
    inside = float(np.logical_and(prediction, true_area).sum()) / foreground if foreground else math.nan
    return dice(true_area, predicted_area), inside


@torch.no_grad()
def validate(
    modules: dict[int, nn.Module],
    foundation: FoundationModel,
    samples: SampleSet,
    targets: list[dict[str, Any]],
    device: torch.device,
) -> ValidationResult:
    """Predict every sample with every target's module and measure it against the sample's labels.

    As prediction does: the modules in full precision and the decoder in the foundation model's planned precision,
    never in the training's autocast (what the best checkpoint is chosen by must be what prediction computes)."""
    for module in modules.values():
        module.eval()
    per_sample: list[dict[str, Any]] = []
    for start in range(0, len(samples), VALIDATION_BATCH):
        indices = list(range(start, min(start + VALIDATION_BATCH, len(samples))))
        embeddings = samples.embedding_batch(indices, device)
        logits = decode_targets(modules, foundation, embeddings)
        for target in targets:
            target_logits = logits[int(target["label"])]
            for row, index in enumerate(indices):
                per_sample.append(_sample_metrics(foundation, samples, target, index,
                                                  target_logits[row : row + 1].float()))
    for module in modules.values():
        module.train()
    return _summarise(per_sample, [int(t["label"]) for t in targets])


def _sample_metrics(
    foundation: FoundationModel, samples: SampleSet, target: dict[str, Any], index: int, logits: torch.Tensor
) -> dict[str, Any]:
    label = int(target["label"])
    labels = samples.targets[label]
    prediction = (foundation.logits_to_original(logits, samples.frames[index])[0, 0] > 0).cpu().numpy()
    box_dice, inside = box_metrics(prediction, labels.boxes_original[index], bool(target.get("per_component")))
    mask = labels.masks_original[index]
    return {
        "sample_id": samples.sample_ids[index],
        "target": label,
        "boxes": len(labels.boxes_original[index]),
        "box_dice": _finite_or_none(box_dice),
        "inside_box_fraction": _finite_or_none(inside),
        "dice": None if mask is None else _finite_or_none(dice(mask, prediction)),
    }


def _summarise(per_sample: list[dict[str, Any]], labels: list[int]) -> ValidationResult:
    per_target = {
        label: {metric: _nanmean([r[metric] for r in per_sample if r["target"] == label]) for metric in METRICS}
        for label in labels
    }
    mean = {metric: _nanmean([values[metric] for values in per_target.values()]) for metric in METRICS}
    return ValidationResult(per_sample, per_target, mean)


def _nanmean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None

