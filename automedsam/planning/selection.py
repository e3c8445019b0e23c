"""The `diverse` selection: encode the candidate samples with the frozen model, once, and describe each by one vector.

The candidates are the samples a draw may label (splits.selection_candidates); above the planned cap a seeded
subsample, spread over groups like the draw, is encoded instead. The embeddings go into the preprocessed
dataset's embedding cache (`embeddings/<model>/SAMPLE.npy`), made exactly as preprocessing makes them (the planned
slicing, the label-free intensity window, the planned model in fp32), so preprocessing (`--embed-all` and the
labelled samples) and the annotation page's review reuse them instead of encoding again. The one exception is a CT
dataset: its planned window comes from the labelled samples' foreground, which the draw does not know yet, so
selection encodes with the all-pixels window and preprocessing replaces those embeddings with the planned ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from automedsam.dataset import RawDataset
from automedsam.foundation.base import FoundationModel, default_batch_size
from automedsam.foundation.cache import EmbeddingCache
from automedsam.io import read_image
from automedsam.planning.coverage import pooled_feature
from automedsam.planning.planner import plan_normalization, plan_slicing
from automedsam.planning.preprocessing import clear_stale_embeddings, sample_catalogue
from automedsam.planning.splits import Selection, selection_candidates, spread_draw
from automedsam.plans import Plans
from automedsam.samples import take_slice

POOLING = "mean over the 64 x 64 grid, L2-normalised"
NO_FOREGROUND_KNOWN = {"foreground_intensity": None, "foreground_source": None}


def diverse_selection(raw: RawDataset, fingerprint: Mapping[str, Any], section: Mapping[str, Any], *,
                      foundation: Mapping[str, Any], seed: int, out_dir: Path, device: torch.device,
                      progress: bool = True) -> tuple[Selection, FoundationModel | None]:
    """The `diverse` Selection for plans.json `selection` `section` (criterion, cap): the candidates' pooled
    features, their embeddings cached in `out_dir`; also the frozen model when one had to be built."""
    slicing = plan_slicing(fingerprint)
    candidates = selection_candidates(fingerprint, slicing["axis"])
    every = [sid for cases in candidates.values() for ids in cases.values() for sid in ids]
    cap = int(section["cap"])
    pool = every if len(every) <= cap else spread_draw(candidates, cap, np.random.default_rng(seed))
    plans = Plans({"slicing": slicing, "normalization": plan_normalization(fingerprint, NO_FOREGROUND_KNOWN),
                   "foundation_model": foundation})
    clear_stale_embeddings(out_dir, plans)
    cache = EmbeddingCache(out_dir, plans.foundation_name)
    missing = [sid for sid in pool if not cache.path(sid).is_file()]
    model = None
    if missing:
        model = plans.build_foundation_model(device=device)
        cache.compute_missing(model, _RawSlices(raw, sample_catalogue(fingerprint, plans.slicing_axis), missing,
                                                plans), batch_size=default_batch_size(device), progress=progress)
    features = {sid: pooled_feature(_cached(cache, sid)) for sid in sorted(pool)}
    record = {"method": "diverse", "criterion": section["criterion"], "pooling": POOLING,
              "foundation_model": plans.foundation_name, "candidates": len(every), "encoded": len(pool), "cap": cap}
    return Selection("diverse", section["criterion"], features, record), model


def _cached(cache: EmbeddingCache, sid: str) -> np.ndarray:
    embedding = cache.get(sid)
    if embedding is None:  # written a moment ago: only a disk failure gets here
        raise OSError(f"embedding {cache.path(sid)} could not be read back")
    return embedding


class _RawSlices:
    """(sample id, normalised 2D image) of the wanted samples, read from the raw files one case at a time and
    normalised as preprocessing normalises the samples it writes; sized so the progress bar shows a total."""

    def __init__(self, raw: RawDataset, catalogue: Mapping[str, tuple[str, int | None]], sample_ids: list[str],
                 plans: Plans) -> None:
        self.cases = {case.case_id: case for case in raw.cases}
        self.by_case: dict[str, list[tuple[str, int | None]]] = {}
        for sid in sample_ids:
            case_id, index = catalogue[sid]
            self.by_case.setdefault(case_id, []).append((sid, index))
        self.count = len(sample_ids)
        self.plans = plans

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for case_id, samples in self.by_case.items():
            normalised = self.plans.normalise(read_image(self.cases[case_id].image)[0])
            axis = self.plans.slicing_axis
            for sid, index in samples:
                pixels = normalised if index is None else take_slice(normalised, axis, index)
                yield sid, np.ascontiguousarray(pixels, dtype=np.float32)
