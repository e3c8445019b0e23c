"""Box refinement: the learned prompt finds the object, the frozen model outlines it from a box around it.

On lesions the learned prompt's mask is often in the right place with a coarse outline, while the frozen model
prompted with a tight box outlines a nodule well. Refinement turns each component of the predicted mask (those at
least MIN_COMPONENT_FRACTION of the largest: smaller ones are specks, not objects) into a box and replaces the
prediction by the frozen decoder's masks for those boxes, on the same embedding (one decoder pass per box, no
encoder pass). Each box's mask is cut to its box, as the box-prompted pseudo-labels are; the union over boxes is
kept. Components are found only where the image lies in the low-res frame (`image_region`): a decoder can fill the
zero padding below a landscape image, a band that would outgrow the object and drop it as a speck, or swallow an
object touching it into a box reaching into the padding. Which targets use it is chosen from the folds' validation
samples (`choose_refined_labels`).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage

from automedsam.foundation.frame import pixels_inside

if TYPE_CHECKING:
    from automedsam.foundation.base import FoundationModel
    from automedsam.foundation.frame import Frame

MIN_COMPONENT_FRACTION = 0.2
PROMPTS_PER_CALL = 16
FOREGROUND = 0.5
Region = tuple[slice, slice]  # low-res rows and columns


def image_region(foundation: FoundationModel, frame: Frame) -> Region:
    """The low-res rows and columns that reach a label map: prediction crops the rest, the input's zero padding and
    a last pixel whose centre lies past the image's edge (`logits_to_original`), so foreground there must count
    neither as an object nor in a score."""
    rows, columns = pixels_inside(frame, size=foundation.low_res_size, input_size=foundation.input_size)
    return slice(0, rows), slice(0, columns)


def component_boxes(mask: np.ndarray, *, min_fraction: float = MIN_COMPONENT_FRACTION) -> list[list[int]]:
    """Inclusive [x0, y0, x1, y1] boxes of the 8-connected components of a 2D mask at least `min_fraction` of the
    largest component's area, largest first."""
    labelled, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    areas = ndimage.sum_labels(np.ones_like(labelled), labelled, index=np.arange(1, count + 1))
    spans = ndimage.find_objects(labelled)
    order = np.argsort(-areas, kind="stable")
    return [[spans[i][1].start, spans[i][0].start, spans[i][1].stop - 1, spans[i][0].stop - 1]
            for i in order if areas[i] >= min_fraction * areas.max()]


@torch.no_grad()
def refine_with_boxes(probabilities: torch.Tensor, embeddings: torch.Tensor, foundation: FoundationModel, *,
                      regions: Sequence[Region] | None = None) -> torch.Tensor:
    """(B, 1, L, L) low-res foreground probabilities and their (B, 256, 64, 64) embeddings -> the refined
    probabilities: per image the union of the frozen model's box-prompted probabilities, each cut to its box,
    over the boxes of the predicted components inside its `regions` entry (`image_region`; None: the whole frame).
    An image with no predicted foreground there keeps its probabilities."""
    masks = _inside((probabilities[:, 0] > FOREGROUND).cpu().numpy(), regions)
    prompts = [(row, box) for row, mask in enumerate(masks) for box in component_boxes(mask)]
    refined = probabilities.clone()
    rows_with_boxes = sorted({row for row, _ in prompts})
    refined[rows_with_boxes] = 0.0
    for start in range(0, len(prompts), PROMPTS_PER_CALL):
        chunk = prompts[start:start + PROMPTS_PER_CALL]
        rows = [row for row, _ in chunk]
        sparse, dense = foundation.box_prompt(torch.tensor([box for _, box in chunk], dtype=torch.float32))
        boxed = torch.sigmoid(foundation.decode(embeddings[rows], sparse, dense)).to(refined.device, refined.dtype)
        for index, (row, (x0, y0, x1, y1)) in enumerate(chunk):
            inside = boxed[index, 0, y0:y1 + 1, x0:x1 + 1]
            refined[row, 0, y0:y1 + 1, x0:x1 + 1] = torch.maximum(refined[row, 0, y0:y1 + 1, x0:x1 + 1], inside)
    return refined


def _inside(masks: np.ndarray, regions: Sequence[Region] | None) -> np.ndarray:
    """(B, L, L) masks cleared outside each image's region."""
    if regions is None:
        return masks
    kept = np.zeros_like(masks)
    for row, (rows, columns) in enumerate(regions):
        kept[row, rows, columns] = masks[row, rows, columns]
    return kept


def refinement_applies(target: Mapping[str, Any]) -> bool:
    """Only for targets the plans supervise with box-prompted pseudo-labels (the plan's finding that the frozen
    model's box masks describe the shape) and that are not rings (a ring's box prompt returns its cavity)."""
    return target.get("pseudo_label", "box_prompt") == "box_prompt" and not target.get("subtract")


def pooled_check_means(fold_checks: Iterable[Mapping[str, Any]], keys: tuple[str, str]
                       ) -> dict[int, tuple[int, float, float]]:
    """Per target label, from the folds' validation checks (label -> {"per_sample": [{key: Dice}]}): how many
    samples scored both `keys`, and their mean Dice for each key (NaN without any): the pooled figures that the
    post-processing choices (box refinement, the second look) compare."""
    pooled: dict[int, list[tuple[float, float]]] = {}
    for check in fold_checks:
        for label, entry in check.items():
            scores = pooled.setdefault(int(label), [])
            for sample in entry.get("per_sample", []):
                if all(isinstance(sample.get(k), (int, float)) and math.isfinite(sample[k]) for k in keys):
                    scores.append((float(sample[keys[0]]), float(sample[keys[1]])))
    means = {}
    for label, scores in sorted(pooled.items()):
        first, second = (float(np.mean(column)) for column in zip(*scores)) if scores else (math.nan, math.nan)
        means[label] = (len(scores), first, second)
    return means


def choose_refined_labels(fold_checks: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per target label, whether to refine, from the folds' validation checks (`box_refinement` of each fold's
    validation/summary.json): refine when, pooled over the folds' validation samples, the refined masks agree
    better with the frozen model's masks of the true boxes than the learned masks do. No check: no refinement."""
    choices = {}
    for label, (count, learned, refined) in pooled_check_means(fold_checks, ("learned", "refined")).items():
        chosen = bool(count) and refined > learned
        choices[label] = {"refine": chosen, "samples": count, "learned": learned, "refined": refined,
                          "reason": (f"on {count} validation samples of the folds, Dice with the frozen model's "
                                     f"masks of the true boxes: refined {refined:.3f} vs learned {learned:.3f}")}
    return choices
