"""Does a second look help a target? Measured on a fold's validation samples made small, with nothing but boxes.

The validation samples are at the labelled objects' scale, where the first pass is sure of itself; the second
look (automedsam.second_look) is for objects much smaller than that. So each validation sample is shrunk into a
black border by CHECK_ZOOM (its object then takes a quarter of its labelled share of the image, as the small heads
of HC18 do), encoded and predicted by the fold's prompt module; where the trigger fires, the second look is taken
(one more encoder pass) and pasted as prediction pastes it (second_look.pasted_look). Both passes are the learned
prompt's, without box refinement: prediction's trigger reads the folds' mean before refinement too, so it fires where
this check fired, also for a target that is refined. The reference is the frozen model's mask of the true boxes on
the shrunk image (the box-prompted pseudo-labels: boxes only, fair under the few-shot protocol). Per sample where the
trigger fired, the check records the Dice of the first pass and of the second look with that reference; the
predictor pools the folds' records to choose (second_look.choose_second_look).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from automedsam.evaluation import dice
from automedsam.second_look import (CHECK_ZOOM, FOREGROUND, box_in_window, centred_window, crop_window, look_window,
                                    pasted_look, unsure_object)
from automedsam.training.data import low_res_box
from automedsam.training.pseudo_labels import box_pseudo_labels

if TYPE_CHECKING:
    from automedsam.foundation.base import FoundationModel
    from automedsam.plans import Plans
    from automedsam.training.data import SampleSet


def checked_object_sizes(plans: Plans) -> dict[str, float]:
    """The planned object sizes of the targets the check can judge: not a ring's, whose box prompt outlines the
    cavity inside it, a reference that says nothing of the ring's region the module predicts."""
    rings = {str(target["label"]) for target in plans.targets if target.get("subtract")}
    return {key: float(size) for key, size in plans.get("second_look", {}).get("object_size", {}).items()
            if key not in rings}


@torch.no_grad()
def second_look_check(modules: Mapping[int, nn.Module], foundation: FoundationModel, samples: SampleSet,
                      images: Sequence[np.ndarray], object_sizes: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """Per target label with a planned object size (as a string key), the per-sample Dice of the first pass and of
    the second look with the frozen model's masks of the true boxes, on the validation samples shrunk by
    CHECK_ZOOM; `images` are the samples' normalised images in the order of `samples`."""
    checks: dict[str, dict[str, Any]] = {}
    for key, object_size in sorted(object_sizes.items()):
        label = int(key)
        module = modules[label]
        was_training = module.training
        module.eval()
        per_sample = []
        for index, boxes in enumerate(samples.targets[label].boxes_original):
            if not boxes:
                continue
            shape = images[index].shape[:2]
            window = centred_window(shape, CHECK_ZOOM)
            shrunk = crop_window(images[index], window)
            small_boxes = [box_in_window(box, window, shape) for box in boxes]
            first, reference = _first_pass(module, foundation, shrunk, small_boxes)
            unsure = unsure_object(first)
            look = None if unsure is None else look_window(unsure.core, shape, object_size=object_size)
            if look is None:
                continue
            seen, _ = _first_pass(module, foundation, crop_window(shrunk, look), [])
            second = pasted_look(first, seen, look, unsure)
            per_sample.append({"sample_id": samples.sample_ids[index],
                               "first": _dice_or_none(reference, first > FOREGROUND),
                               "second": _dice_or_none(reference, second > FOREGROUND)})
        module.train(was_training)
        checks[key] = {"reference": "frozen model prompted with the true boxes", "zoom": CHECK_ZOOM,
                       "per_sample": per_sample}
    return checks


def _first_pass(module: nn.Module, foundation: FoundationModel, image: np.ndarray,
                boxes: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """One encoder pass: the module's probability on the image grid and the union of the frozen model's masks of
    `boxes` (each cut to its box)."""
    prepared, frame = foundation.prepare(image)
    embedding = foundation.encode(prepared[None])
    logits = foundation.decode(embedding, *module(embedding)).float()
    probability = torch.sigmoid(foundation.logits_to_original(logits, frame))[0, 0].cpu().numpy()
    reference = np.zeros(image.shape[:2], dtype=bool)
    if boxes:
        low_res = box_pseudo_labels(foundation, embedding, [[low_res_box(foundation, box, frame) for box in boxes]])
        reference = foundation.logits_to_original(low_res - 0.5, frame)[0, 0].cpu().numpy() > 0
    return probability, reference


def _dice_or_none(reference: np.ndarray, prediction: np.ndarray) -> float | None:
    value = dice(reference, prediction)
    return None if value != value else float(value)
