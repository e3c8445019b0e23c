"""The benchmark's held-out images: unlabelled images, their references, prompt boxes and cached embeddings.

Held-out (test) images are cases whose group (patient, examination) holds no labelled sample of any benchmarked
seed, so every seed is measured on the same images and none of them was seen in training, even as another frame of
the same patient. Their embeddings are computed once per encoder precision and shared by every seed, variant
and fold.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from automedsam.boxes import annotator_boxes
from automedsam.dataset import Case, RawDataset
from automedsam.errors import AutomedsamError
from automedsam.files import save_json
from automedsam.foundation.base import FoundationModel
from automedsam.foundation.cache import EmbeddingCache
from automedsam.io import read_image, read_segmentation, split_extension
from automedsam.plans import Plans
from automedsam.samples import case_of, sample_id

SELECTION_SEED = 0


@dataclass
class HeldOutSet:
    """Folders of the chosen test cases (images in nnU-Net naming, references) and the prompt box file."""

    cases: list[Case]
    images: Path
    references: Path
    boxes: Path


def choose_held_out_cases(raw: RawDataset, labelled_samples: Sequence[str], count: int) -> list[Case]:
    """`count` labelled-by-mask cases drawn (fixed seed) from the groups that hold no labelled sample."""
    labelled_cases = {case_of(sample) for sample in labelled_samples}
    used_groups = {case.group for case in raw.cases if case.case_id in labelled_cases}
    candidates = [case for case in raw.cases if case.label is not None and case.group not in used_groups]
    if not candidates:
        raise AutomedsamError(f"{raw.name}: every group holds a labelled sample of some seed, so no unseen test "
                              "image is left. Benchmark fewer seeds.")
    if count < 1:
        raise AutomedsamError(f"--test-images must be at least 1, got {count}.")
    chosen = np.random.default_rng(SELECTION_SEED).choice(len(candidates), size=min(count, len(candidates)),
                                                          replace=False)
    return [candidates[index] for index in sorted(chosen)]


def write_held_out_set(cases: Sequence[Case], folder: Path, *,
                       per_component: Mapping[int, bool] | None = None) -> HeldOutSet:
    """Copy the chosen images and references into `folder` and write the true tight boxes as a prompt box file
    (`per_component`: the labels boxed one region at a time, as the plans box training samples)."""
    images, references = folder / "images", folder / "references"
    for directory in (images, references):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    boxes: dict[str, list[dict[str, Any]]] = {}
    for case in cases:
        _, ending = split_extension(case.image)
        shutil.copyfile(case.image, images / f"{case.case_id}_0000{ending}")
        shutil.copyfile(case.label, references / f"{case.case_id}{ending}")
        boxes[case.case_id] = reference_boxes(read_segmentation(case.label)[0], per_component=per_component)
    save_json(folder / "boxes.json", boxes)
    return HeldOutSet(list(cases), images, references, folder / "boxes.json")


def reference_boxes(label_map: np.ndarray, *, per_component: Mapping[int, bool] | None = None) -> list[dict[str, Any]]:
    """One tight box per label present, one per region of a label in `per_component` (two nodules, two boxes: as
    the training samples are boxed and a clinician draws them, specks left out); per slice along the first axis for
    a volume."""
    labels = [int(v) for v in np.unique(label_map) if v != 0]
    split = per_component or {}
    planes = [(None, label_map)] if label_map.ndim == 2 else list(enumerate(label_map))
    return [{"label": label, "box": list(box), **({} if index is None else {"slice": index})}
            for index, plane in planes for label in labels
            for box in annotator_boxes(plane, [label], per_component=split.get(label, False))[label]]


def embedding_cache(folder: Path, plans: Mapping[str, Any]) -> EmbeddingCache:
    """A cache keyed by what changes the embeddings (normalisation, slicing, model and its precision), so seeds
    share it."""
    plans = Plans(plans)
    text = json.dumps(plans.embedding_choices(), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return EmbeddingCache(folder / f"cache_{digest}", plans.foundation_name)


def case_slices(case: Case, plans: Mapping[str, Any]) -> tuple[bool, list[tuple[str, np.ndarray]]]:
    """Whether the case is a volume, and its (sample id, normalised 2D slice) along the planned slicing axis."""
    plans = Plans(plans)
    image, geometry = read_image(case.image)
    normalised = plans.normalise(image)
    if geometry.ndim == 2:
        return False, [(sample_id(case.case_id, None), normalised)]
    axis = int(plans.slicing_axis or 0)
    return True, [(sample_id(case.case_id, index), plane)
                  for index, plane in enumerate(np.moveaxis(normalised, axis, 0))]


def encode_held_out_set(cases: Sequence[Case], plans: Mapping[str, Any], cache: EmbeddingCache,
                        foundation: FoundationModel) -> int:
    """Embed every slice of every test case that the cache lacks; returns how many were computed."""
    items = [item for case in cases for item in case_slices(case, plans)[1]]
    return cache.compute_missing(foundation, items)


def case_embeddings(case: Case, plans: Mapping[str, Any],
                    cache: EmbeddingCache) -> tuple[torch.Tensor, tuple[int, int], bool]:
    """The case's cached slice embeddings (N, 256, 64, 64), the slice shape and whether it is a volume."""
    is_volume, slices = case_slices(case, plans)
    stack = [slice_embedding(cache, sid) for sid, _ in slices]
    return torch.stack(stack), tuple(slices[0][1].shape[:2]), is_volume


def slice_embedding(cache: EmbeddingCache, sid: str) -> torch.Tensor:
    """One test sample's cached embedding (256, 64, 64), float32."""
    embedding = cache.get(sid)
    if embedding is None:
        raise AutomedsamError(f"Test embedding {cache.path(sid)} is missing or unreadable; rerun the benchmark to "
                              "compute it.")
    return torch.from_numpy(embedding.astype(np.float32))
