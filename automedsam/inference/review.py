"""Which unlabelled samples to show the annotator first: those the trained folds disagree on most.

Each sample is encoded once (its embedding read from the preprocessed folder's cache, or added to it); every fold's
prompt modules and the ensemble of all folds then segment it. Disagreement is 1 - the mean Dice between the folds'
label maps, over fold pairs and the labels some fold found (two empty masks of such a label agree; 0 when no fold
found any), as `agreement` scores predicted cases: a label no fold found would count as full agreement and dilute the
disagreement on the others of a multi-label dataset. With a single fold there are no pairs, so the fold's own
uncertainty stands in: the mean of 1 - |2p - 1| over the pixels it gives any label a probability above 0.1.

A label the annotator boxed on every sample (none marked No structure: a nodule in every image) is `expected`: where
no fold finds it, the sample counts as full disagreement on it (Dice 0 for every fold pair; a single fold's
uncertainty 1), since missing the structure altogether is the failure to box first, not agreement. Only the
session's own boxes say so (annotation.review_queue.expected_labels); automedsam_predict expects nothing.

The boxes proposed from the ensemble's label map are what Accept saves as training boxes, so they are drawn as training
reads boxes: a ring's (a target with "subtract", ACDC's myocardium) encloses its filled region, ring and cavity.
"""
from __future__ import annotations

from itertools import combinations
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage

from automedsam.box_refinement import component_boxes
from automedsam.evaluation import dice
from automedsam.foundation.base import FoundationModel
from automedsam.foundation.cache import PlannedEmbeddingCache
from automedsam.inference.model_folder import ModelFolder
from automedsam.inference.predictor import Predictor
from automedsam.progress import progress_bar

UNCERTAIN_FROM = 0.1
RANKING_TASK = "Review: segmenting unlabelled samples"  # what the ranking's progress is called, bar or line


def rank_by_disagreement(folder: ModelFolder, samples: Iterable[tuple[str, np.ndarray]], *,
                         expected: Collection[int] = (), cache: PlannedEmbeddingCache | None = None,
                         device: str | torch.device | None = None, foundation: FoundationModel | None = None,
                         total: int | None = None, progress: bool = True,
                         segmented: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """[{"sample_id", "disagreement", "boxes", "label_map"}] for (sample id, normalised plane) pairs, worst first.

    `expected`: the labels every image holds (see `disagreement`). `foundation`: the planned frozen model, when the
    caller has it built already. `segmented`: told how many samples are done after each one, for a caller that shows
    progress elsewhere than on this process's terminal (the annotation page; with `progress` False). The ensemble's
    label map is automedsam_predict's, second look included where the folds' checks chose it; the folds' maps that
    measure the disagreement are their first passes."""
    ensemble = Predictor.from_model(folder, device=device, foundation=foundation)
    ranked = []
    with progress_bar(progress, transient=True) as bar:
        task = bar.add_task(RANKING_TASK, total=total)
        for sample_id, plane in samples:
            embedding = _embedding(ensemble, sample_id, plane, cache)
            label_map, probabilities, fold_maps = ensemble.predict_plane_and_folds(embedding, plane)
            boxes = ensemble_proposals(label_map, ensemble.targets)
            score = disagreement(fold_maps, probabilities, ensemble.labels, expected=expected)
            ranked.append({"sample_id": sample_id, "disagreement": score, "boxes": boxes, "label_map": label_map})
            bar.advance(task)
            if segmented is not None:
                segmented(len(ranked))
    return sorted(ranked, key=lambda item: -item["disagreement"])


def ensemble_proposals(label_map: np.ndarray, targets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """[{"label", "box"}] offered to the annotator for a sample, from the ensemble's 2D label map, per plans target."""
    return [{"label": int(target["label"]), "box": box} for target in targets
            for box in proposed_boxes(proposal_mask(label_map, target), per_component=bool(target["per_component"]))]


def proposal_mask(label_map: np.ndarray, target: Mapping[str, Any]) -> np.ndarray:
    """The pixels a target's proposed boxes enclose: its own, or for a ring the components of its filled region
    (`region`, ring and the labels it encloses) that hold some of the ring. Training reads a ring's boxes as its
    filled region's; the ring's own pixels, open wherever the ensemble predicts it open, gave a box cutting through
    the cavity. A cavity without ring pixels around it proposes no ring box, as no annotator box of a mask would."""
    own = label_map == int(target["label"])
    if not target.get("subtract"):
        return own
    filled, _ = ndimage.label(np.isin(label_map, [int(v) for v in target["region"]]),
                              structure=np.ones((3, 3), dtype=bool))
    return np.isin(filled, np.unique(filled[own]))


def proposed_boxes(mask: np.ndarray, *, per_component: bool) -> list[list[int]]:
    """The boxes offered to the annotator for one label: one per component, or one around them all. Specks (components
    under MIN_COMPONENT_FRACTION of the largest, box refinement's rule) are left out: accepted, they would become
    training boxes of a few pixels, or stretch the one box to wherever they lie."""
    boxes = component_boxes(mask)
    if per_component or not boxes:
        return boxes
    corners = np.array(boxes)
    return [[int(corners[:, 0].min()), int(corners[:, 1].min()), int(corners[:, 2].max()), int(corners[:, 3].max())]]


def disagreement(fold_maps: list[np.ndarray], probabilities: dict[int, np.ndarray], labels: list[int], *,
                 expected: Collection[int] = ()) -> float:
    """1 - mean pairwise Dice of the folds' label maps over the labels some fold found (0.0 when none did); a single
    fold's uncertainty when there is no pair. An `expected` label no fold found is full disagreement: a total miss
    of a structure every image holds ranks first, not last."""
    missed = [label for label in labels if label in expected and not _found(label, fold_maps)]
    if len(fold_maps) > 1:
        found = [label for label in labels if _found(label, fold_maps)]
        pairs = list(combinations(fold_maps, 2))
        scores = [dice(first == label, second == label) for label in found for first, second in pairs]
        scores += [0.0] * (len(missed) * len(pairs))
        return float(1.0 - np.mean(np.nan_to_num(scores, nan=1.0))) if scores else 0.0
    return _single_fold_uncertainty(probabilities, [label for label in labels if label not in missed],
                                    missed=len(missed))


def _found(label: int, fold_maps: list[np.ndarray]) -> bool:
    return any(np.any(fold_map == label) for fold_map in fold_maps)


def _single_fold_uncertainty(probabilities: dict[int, np.ndarray], labels: list[int], *, missed: int) -> float:
    """The mean of 1 - |2p - 1| over the pixels the fold gives one of `labels` a probability above UNCERTAIN_FROM
    (0.0 when none); each of `missed` expected labels the fold did not find weighs as one label of uncertainty 1
    beside those of `labels` that have such pixels."""
    uncertain = [probabilities[label] for label in labels if np.any(probabilities[label] > UNCERTAIN_FROM)]
    if not uncertain:
        return 1.0 if missed else 0.0
    stacked = np.stack(uncertain)
    pooled = float(np.mean(1.0 - np.abs(2.0 * stacked[stacked > UNCERTAIN_FROM] - 1.0)))
    return (pooled * len(uncertain) + missed) / (len(uncertain) + missed)


def _embedding(predictor: Predictor, sample_id: str, plane: np.ndarray,
               cache: PlannedEmbeddingCache | None) -> torch.Tensor:
    model = predictor.foundation
    if cache is not None:
        return cache.embeddings(model, [sample_id], plane[None])
    return model.encode(model.prepare(plane)[0][None]).cpu()
