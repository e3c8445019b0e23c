"""From per-target probabilities to one label map: averaging, rings, overlaps, planned postprocessing.

Folds and test-time flips are averaged as probabilities (after the sigmoid), not logits: a fold that is very sure
cannot outvote the others by an unbounded margin, and the average is itself a probability that can be saved and
thresholded at 0.5 (saved before the planned postprocessing, so components that the largest-component step removes
from the label map are still in it). The resizing to the original grid is linear, so averaging before or after it
is the same. The postprocessing works on each 2D image, a volume's slices one by one: planning counted the objects
per image on the 2D samples, so a structure seen as one object per slice may be several pieces in 3D.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from acvl_utils.morphology.morphology_helper import remove_all_but_largest_component

from automedsam.errors import AutomedsamError

FOREGROUND_THRESHOLD = 0.5
LABEL_MAP_CHUNK = 2**18  # voxels of the label map taken at once


class RunningMean:
    """Mean of tensors added one at a time, so folds and flips never sit in memory together."""

    def __init__(self) -> None:
        self._total: torch.Tensor | None = None
        self._count = 0

    def add(self, value: torch.Tensor) -> None:
        self._total = value.clone() if self._total is None else self._total + value
        self._count += 1

    def mean(self) -> torch.Tensor:
        if self._total is None:
            raise ValueError("RunningMean.mean() called before any value was added")
        return self._total / self._count


def check_targets(targets: Sequence[Mapping], where: str) -> None:
    """Every subtracted label of a ring target must itself be a predicted target."""
    labels = {int(target["label"]) for target in targets}
    if not labels:
        raise AutomedsamError(f"{where} lists no targets. Re-run automedsam_plan_and_preprocess.")
    for target in targets:
        missing = sorted(set(int(v) for v in target.get("subtract", [])) - labels)
        if missing:
            raise AutomedsamError(f"{where}: target {target['label']} subtracts label(s) {missing}, which are not "
                                  "predicted targets. Re-run automedsam_plan_and_preprocess.")


def ring_probabilities(probabilities: Mapping[int, np.ndarray], targets: Sequence[Mapping]) -> dict[int, np.ndarray]:
    """Turn each ring target's filled-region probability back into the ring's.

    A ring (e.g. myocardium, trained as myocardium + cavity) is inside its region and outside every subtracted
    structure: p_ring = min(p_region, 1 - max(p_subtract)). Other targets are returned unchanged.
    """
    combined = {}
    for target in targets:
        label = int(target["label"])
        subtract = [int(v) for v in target.get("subtract", [])]
        if subtract:
            inner = np.max(np.stack([probabilities[s] for s in subtract]), axis=0)
            combined[label] = np.minimum(probabilities[label], 1.0 - inner)
        else:
            combined[label] = probabilities[label]
    return combined


def label_map_from(probabilities: Mapping[int, np.ndarray]) -> np.ndarray:
    """Each pixel takes the target of highest probability (the lowest label on a tie) if that probability exceeds
    0.5, else background. Filled `LABEL_MAP_CHUNK` voxels (at least one index of the first axis) at a time, so the
    stacked probabilities and argmax indices of a large volume never exist whole beside its probabilities."""
    labels = sorted(probabilities)
    shape = probabilities[labels[0]].shape
    if any(probabilities[label].shape != shape for label in labels):
        raise ValueError(f"label_map_from needs probabilities of one shape, got "
                         f"{ {label: probabilities[label].shape for label in labels} }")
    values = np.asarray(labels, dtype=np.uint8 if max(labels) <= 255 else np.uint16)
    label_map = np.zeros(shape, dtype=values.dtype)
    rows = max(1, LABEL_MAP_CHUNK // max(1, int(np.prod(shape[1:]))))
    for start in range(0, shape[0], rows):
        chunk = slice(start, start + rows)
        stacked = np.stack([probabilities[label][chunk] for label in labels])
        best = np.argmax(stacked, axis=0)
        foreground = np.take_along_axis(stacked, best[None], axis=0)[0] > FOREGROUND_THRESHOLD
        label_map[chunk] = np.where(foreground, values[best], 0)
    return label_map


def keep_largest_component(label_map: np.ndarray, label: int) -> np.ndarray:
    """Set every connected component of `label` but the largest (all largest on a tie) to background, with full
    connectivity (8-connected in 2D, as planning counts a sample's objects): acvl-utils' helper, the one nnU-Net's
    postprocessing uses."""
    mask = label_map == label
    kept = remove_all_but_largest_component(mask)
    if kept.sum() == mask.sum():
        return label_map
    result = label_map.copy()
    result[mask & ~kept] = 0
    return result


def postprocess(label_map: np.ndarray, plans: Mapping, *, axis: int | None) -> np.ndarray:
    """Apply plans.json's `postprocessing` (keep the largest component of the labels it names) to each 2D image:
    a 2D label map (`axis` None), or each slice of a volume cut along `axis`. Planning chose it from the objects per
    2D sample (p95 one object per image); in 3D, an object on slices apart from the largest one was deleted from
    every slice it lies on."""
    if (axis is None) != (label_map.ndim == 2):
        raise ValueError(f"postprocess needs axis None for a 2D label map and a slicing axis for a volume, got axis "
                         f"{axis} for shape {label_map.shape}")
    choices = plans.get("postprocessing", {}).get("largest_component", {})
    labels = sorted(int(label) for label, enabled in choices.items() if enabled)
    if axis is None or not labels:
        return _postprocess_image(label_map, labels)
    result = label_map.copy()
    slices = np.moveaxis(result, axis, 0)  # a view: each slice is written back into `result`
    for index in range(len(slices)):
        slices[index] = _postprocess_image(slices[index], labels)
    return result


def _postprocess_image(label_map: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """One 2D label map with only the largest component of each of `labels` kept."""
    for label in labels:
        label_map = keep_largest_component(label_map, label)
    return label_map
