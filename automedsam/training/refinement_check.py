"""Does box refinement help a target? Measured on a fold's validation samples with nothing but their boxes.

The reference is what the frozen model outlines from each validation sample's true boxes (the box-prompted
pseudo-labels, cut to their boxes): fair under the few-shot protocol, since it comes from the boxes alone. For each
sample the check records the Dice of the learned mask and of the refined mask with that reference; the predictor
pools the folds' records to choose (box_refinement.choose_refined_labels).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import nn

from automedsam.box_refinement import FOREGROUND, image_region, refine_with_boxes, refinement_applies
from automedsam.evaluation import dice
from automedsam.training.pseudo_labels import box_pseudo_labels

if TYPE_CHECKING:
    from automedsam.foundation.base import FoundationModel
    from automedsam.training.data import SampleSet

CHECK_BATCH = 8


@torch.no_grad()
def refinement_check(modules: Mapping[int, nn.Module], foundation: FoundationModel, samples: SampleSet,
                     targets: Sequence[Mapping[str, Any]], *, device: torch.device) -> dict[str, dict[str, Any]]:
    """Per refinable target label (as a string key), the per-sample Dice of learned and refined masks with the
    frozen model's masks of the true boxes; samples without a box of the target say nothing and are left out."""
    checks: dict[str, dict[str, Any]] = {}
    for target in targets:
        if not refinement_applies(target):
            continue
        label = int(target["label"])
        module, boxes = modules[label], samples.targets[label].boxes_low_res
        was_training = module.training
        module.eval()
        per_sample = []
        for start in range(0, len(samples), CHECK_BATCH):
            indices = [i for i in range(start, min(start + CHECK_BATCH, len(samples))) if boxes[i]]
            if not indices:
                continue
            embeddings = samples.embedding_batch(indices, device)
            learned = torch.sigmoid(foundation.decode(embeddings, *module(embeddings)).float())
            regions = [image_region(foundation, samples.frames[index]) for index in indices]
            refined = refine_with_boxes(learned, embeddings, foundation, regions=regions)
            reference = box_pseudo_labels(foundation, embeddings, [boxes[i] for i in indices])[:, 0] > 0.5
            for row, (index, image) in enumerate(zip(indices, regions)):
                per_sample.append({
                    "sample_id": samples.sample_ids[index],
                    "learned": _dice_or_none(reference[row][image], (learned[row, 0] > FOREGROUND)[image]),
                    "refined": _dice_or_none(reference[row][image], (refined[row, 0] > FOREGROUND)[image]),
                })
        module.train(was_training)
        checks[str(label)] = {"reference": "frozen model prompted with the true boxes", "per_sample": per_sample}
    return checks


def _dice_or_none(reference: torch.Tensor, prediction: torch.Tensor) -> float | None:
    value = dice(reference.cpu().numpy(), prediction.cpu().numpy())
    return None if value != value else float(value)
