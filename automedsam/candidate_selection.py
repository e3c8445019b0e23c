"""Candidate selection: the places the folds point at, the ones they agree on kept, outlined by the frozen model.

On lesions (a nodule whose place and look vary) a fold's learned prompt often marks the nodule and also a patch of
tissue elsewhere, and the folds do not mark the same patches: the fold average keeps every place that enough folds
mark, the nodule included. Selection treats each component of the fold-averaged mask and of every fold's own mask
as a candidate object, outlines it with the frozen decoder prompted by its box (as box refinement does), scores
it by the folds' agreement (the folds' mean probability inside the outline) and keeps the best candidate, plus any
other that does not overlap it and scores at least KEEP_FRACTION of the best (an image can show two nodules, or one
nodule twice in a dual-view capture). Which targets use it is chosen from the folds' validation samples
(`choose_selected_labels`).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np
import torch

from automedsam.box_refinement import FOREGROUND, PROMPTS_PER_CALL, component_boxes

if TYPE_CHECKING:
    from automedsam.foundation.base import FoundationModel

KEEP_FRACTION = 0.8
MIN_BOX_AREA = 16  # low-res pixels: smaller components are specks at the decoder's resolution, not objects
DUPLICATE_IOU = 0.85  # two boxes this alike are the same candidate
OVERLAP_FRACTION = 0.3  # a candidate covering this much of a kept one (or it of the candidate) is the same object


def candidate_boxes(fold_probabilities: np.ndarray) -> list[list[int]]:
    """(F, L, L) probabilities of the folds -> the distinct boxes of the components of the fold-averaged mask and
    of each fold's mask, at least MIN_BOX_AREA; a box almost equal to an earlier one is left out."""
    masks = fold_probabilities > FOREGROUND
    boxes: list[list[int]] = []
    for mask in (fold_probabilities.mean(axis=0) > FOREGROUND, *masks):
        for box in component_boxes(mask, min_fraction=0.0):
            if _area(box) >= MIN_BOX_AREA and all(box_iou(box, kept) <= DUPLICATE_IOU for kept in boxes):
                boxes.append(box)
    return boxes


@torch.no_grad()
def select_candidates(fold_probabilities: torch.Tensor, embeddings: torch.Tensor,
                      foundation: FoundationModel) -> torch.Tensor:
    """(F, B, 1, L, L) low-res probabilities of F folds and the (B, 256, 64, 64) embeddings -> (B, 1, L, L): per
    image the frozen model's box-prompted probabilities (each cut to its box) of the selected candidates. An image
    without a candidate keeps the fold mean."""
    mean = fold_probabilities.mean(dim=0)
    selected = mean.clone()
    for row in range(mean.shape[0]):
        folds = fold_probabilities[:, row, 0]
        boxes = candidate_boxes(folds.float().cpu().numpy())
        if not boxes:
            continue
        outlines = _outlines(embeddings[row], boxes, foundation).to(mean.device, mean.dtype)
        masks = outlines > FOREGROUND
        scores = [float(folds[:, mask].mean()) if mask.any() else 0.0 for mask in masks]
        chosen = _choose(scores, masks)
        if chosen:
            selected[row, 0] = outlines[chosen].amax(dim=0)
    return selected


def _outlines(embedding: torch.Tensor, boxes: list[list[int]], foundation: FoundationModel) -> torch.Tensor:
    """(len(boxes), L, L): the frozen decoder's probabilities for each box on one embedding, cut to the box."""
    parts = []
    for start in range(0, len(boxes), PROMPTS_PER_CALL):
        chunk = boxes[start:start + PROMPTS_PER_CALL]
        sparse, dense = foundation.box_prompt(torch.tensor(chunk, dtype=torch.float32))
        parts.append(torch.sigmoid(foundation.decode(embedding[None].expand(len(chunk), -1, -1, -1), sparse,
                                                     dense))[:, 0].float().cpu())
    outlines = torch.cat(parts)
    cut = torch.zeros_like(outlines)
    for index, (x0, y0, x1, y1) in enumerate(boxes):
        cut[index, y0:y1 + 1, x0:x1 + 1] = outlines[index, y0:y1 + 1, x0:x1 + 1]
    return cut


def _choose(scores: list[float], masks: torch.Tensor) -> list[int]:
    """Indices kept: the best-scoring candidate with a non-empty outline, then, best first, every candidate
    scoring at least KEEP_FRACTION of it that overlaps no kept one."""
    order = [index for index in sorted(range(len(scores)), key=lambda i: -scores[i]) if masks[index].any()]
    if not order or scores[order[0]] <= 0:
        return []
    kept = [order[0]]
    for index in order[1:]:
        if scores[index] >= KEEP_FRACTION * scores[order[0]] and not any(
                _same_object(masks[index], masks[other]) for other in kept):
            kept.append(index)
    return kept


def _same_object(first: torch.Tensor, second: torch.Tensor) -> bool:
    shared = int((first & second).sum())
    return shared > OVERLAP_FRACTION * min(int(first.sum()), int(second.sum()))


def box_iou(first: list[int], second: list[int]) -> float:
    """Intersection over union of two inclusive boxes."""
    width = min(first[2], second[2]) - max(first[0], second[0]) + 1
    height = min(first[3], second[3]) - max(first[1], second[1]) + 1
    shared = max(width, 0) * max(height, 0)
    return shared / (_area(first) + _area(second) - shared)


def _area(box: list[int]) -> int:
    return (box[2] - box[0] + 1) * (box[3] - box[1] + 1)


def choose_selected_labels(fold_checks: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per target label, whether to select candidates, from the folds' validation checks (`box_refinement` of each
    fold's validation/summary.json, whose `selected` values are each fold's own candidates chosen by its own
    probabilities): select when, pooled over the folds' validation samples, the selected masks agree better with
    the frozen model's masks of the true boxes than both the learned and the box-refined masks. No check (or one
    written before selection existed): no selection."""
    pooled: dict[int, dict[str, list[float]]] = {}
    kinds = ("learned", "refined", "selected")
    for check in fold_checks:
        for label, entry in check.items():
            values = pooled.setdefault(int(label), {kind: [] for kind in kinds})
            for sample in entry.get("per_sample", []):
                if all(isinstance(sample.get(kind), (int, float)) and math.isfinite(sample[kind]) for kind in kinds):
                    for kind in kinds:
                        values[kind].append(float(sample[kind]))
    choices = {}
    for label, values in sorted(pooled.items()):
        count = len(values["selected"])
        means = {kind: float(np.mean(values[kind])) if count else math.nan for kind in kinds}
        chosen = bool(count) and means["selected"] > max(means["learned"], means["refined"])
        choices[label] = {"select": chosen, "samples": count, **means,
                          "reason": (f"on {count} validation samples of the folds, Dice with the frozen model's masks "
                                     f"of the true boxes: selected {means['selected']:.3f} vs learned "
                                     f"{means['learned']:.3f}, refined {means['refined']:.3f}")}
    return choices
