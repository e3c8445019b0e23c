"""The coverage selections (`diverse`, `kmeanspp`): encode the candidate samples with the frozen model, once, and
describe each by one vector.

The candidates are the samples a draw may label (splits.selection_candidates); above the planned cap a seeded
subsample, spread over groups like the draw, is encoded instead. Each candidate's pooled vector is kept in
`selection_features.npz` (planning.selection_features), which outlives any change of the encoder's precision, so a
rerun or a later benchmark seed reads the vectors instead of encoding again. Where the embedding cache
(`embeddings/<model>/`) holds nothing yet or was made under the selection's own plans (the planned slicing, the
label-free intensity window, the planned model in fp32), the candidates' full embeddings go into it too, so
preprocessing (`--embed-all` and the labelled samples) and the annotation page's review reuse them; a cache made
under other plans (preprocessing planned bf16, or a CT window from the labelled foreground) is only read from where
it agrees in all but the precision, and never cleared or written here. Either way, a candidate whose image digest
changed since its vector was pooled loses its cached embedding first: it is another image's, whatever its date.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from automedsam.dataset import RawDataset
from automedsam.foundation.base import FoundationModel, default_batch_size
from automedsam.foundation.cache import EmbeddingCache, recorded_embeddings_key
from automedsam.io import read_image
from automedsam.progress import progress_bar
from automedsam.planning.coverage import pooled_feature
from automedsam.planning.planner import plan_normalization, plan_slicing
from automedsam.planning.preprocessing import case_source, clear_stale_embeddings, sample_catalogue
from automedsam.planning.selection_features import (StoredFeature, features_key, features_written_ns, load_features,
                                                    save_features)
from automedsam.planning.splits import Selection, selection_candidates, spread_draw
from automedsam.plans import FOUNDATION_PRECISIONS, Plans
from automedsam.samples import case_of, take_slice

POOLING = "mean over the 64 x 64 grid, L2-normalised"
NO_FOREGROUND_KNOWN = {"foreground_intensity": None, "foreground_source": None}


def coverage_selection(raw: RawDataset, fingerprint: Mapping[str, Any], section: Mapping[str, Any], *,
                      foundation: Mapping[str, Any], seed: int, out_dir: Path, device: torch.device,
                      progress: bool = True) -> tuple[Selection, FoundationModel | None]:
    """The Selection for plans.json `selection` `section` (method, criterion, cap): the candidates' pooled
    features, read from or added to `out_dir`'s features file; also the frozen model when one had to be built."""
    slicing = plan_slicing(fingerprint)
    candidates = selection_candidates(fingerprint, slicing["axis"])
    every = [sid for cases in candidates.values() for ids in cases.values() for sid in ids]
    cap = int(section["cap"])
    pool = every if len(every) <= cap else spread_draw(candidates, cap, np.random.default_rng(seed))
    plans = Plans({"slicing": slicing, "normalization": plan_normalization(fingerprint, NO_FOREGROUND_KNOWN),
                   "foundation_model": foundation})
    key = features_key(plans)
    catalogue = sample_catalogue(fingerprint, plans.slicing_axis)
    cases = {case.case_id: case for case in raw.cases}
    digests = {sid: case_source(cases[catalogue[sid][0]])["image"] for sid in pool}
    stored = load_features(out_dir, key=key)
    features = _still_current(stored, digests, {sid: cases[catalogue[sid][0]].image for sid in pool},
                              written=features_written_ns(out_dir))
    missing = [sid for sid in pool if sid not in features]
    model = None
    if missing:
        _drop_replaced_embeddings(EmbeddingCache(out_dir, plans.foundation_name), stored, digests)
        model = plans.build_foundation_model(device=device)
        images = _RawSlices(raw, catalogue, missing, plans)
        pooled = _pooled_missing(images, plans, model=model, out_dir=out_dir, device=device, digests=digests,
                                 progress=progress)
        features.update({sid: StoredFeature(vector, precision, digests[sid])
                         for sid, (vector, precision) in pooled.items()})
        save_features(out_dir, {**stored, **features}, key=key)
    record = {"method": section["method"], "criterion": section["criterion"], "pooling": POOLING,
              "foundation_model": plans.foundation_name, "candidates": len(every), "encoded": len(pool), "cap": cap}
    pooled = {sid: features[sid].vector for sid in sorted(pool)}
    return Selection(section["method"], section["criterion"], pooled, record), model


def _still_current(stored: Mapping[str, StoredFeature], digests: Mapping[str, str], images: Mapping[str, Path], *,
                   written: int) -> dict[str, StoredFeature]:
    """The stored features of `digests`' samples pooled from the image there now: the same digest, or, pooled before
    digests were kept, an image no newer than the features file (given its digest now)."""
    current = {}
    for sid, digest in digests.items():
        found = stored.get(sid)
        if found is not None and found.image == digest:
            current[sid] = found
        elif found is not None and not found.image and images[sid].stat().st_mtime_ns <= written:
            current[sid] = found._replace(image=digest)
    return current


def _drop_replaced_embeddings(cache: EmbeddingCache, stored: Mapping[str, StoredFeature],
                              digests: Mapping[str, str]) -> None:
    """Delete the cached embeddings of the candidates whose image digest changed since their vector was pooled: an
    embedding stored without its image's digest is judged by time, and an image replaced by an older-dated file
    (cp -p, unzip, rsync -a) is no newer than it."""
    for sid, digest in digests.items():
        found = stored.get(sid)
        if found is not None and found.image not in ("", digest):
            cache.discard(sid)


def _pooled_missing(images: _RawSlices, plans: Plans, *, model: FoundationModel, out_dir: Path,
                    device: torch.device, digests: Mapping[str, str],
                    progress: bool) -> dict[str, tuple[np.ndarray, str]]:
    """(pooled vector, precision) of `images`' samples: through the embedding cache where it is free or made under
    these plans (fp32); else pooled from the embeddings it holds in another precision and encoded beside it for
    the rest, so that a cache preprocessing planned is neither cleared nor mixed. `digests`: sample id -> its
    image's digest, taken before the pixels are read, stored beside each embedding."""
    cache = EmbeddingCache(out_dir, plans.foundation_name)
    recorded = recorded_embeddings_key(out_dir, plans.foundation_name)
    batch_size = default_batch_size(device)
    raw_images = {case_id: case.image for case_id, case in images.cases.items()}
    if recorded in (None, plans.embeddings_key()):
        clear_stale_embeddings(out_dir, plans)
        cache.drop_outdated(images.sample_ids, raw_images)  # an image imported again is encoded again
        cache.compute_missing(model, images, image_digests=digests, batch_size=batch_size, progress=progress)
        return {sid: (pooled_feature(_cached(cache, sid)), model.precision) for sid in images.sample_ids}
    pooled = {}
    for precision in FOUNDATION_PRECISIONS:
        agrees = Plans({**plans.data, "foundation_model": {**plans["foundation_model"], "precision": precision}})
        if agrees.embeddings_key() == recorded:
            found = {sid: cache.get(sid) for sid in images.sample_ids
                     if not cache.outdated(sid, raw_images[case_of(sid)])}
            pooled = {sid: (pooled_feature(embedding), precision) for sid, embedding in found.items()
                      if embedding is not None}
    rest = images.only([sid for sid in images.sample_ids if sid not in pooled])
    return {**pooled, **_encode_pooled(rest, model=model, batch_size=batch_size, progress=progress)}


def _encode_pooled(images: _RawSlices, *, model: FoundationModel, batch_size: int,
                   progress: bool) -> dict[str, tuple[np.ndarray, str]]:
    """Encode `images` outside the cache and pool each embedding as the cache would store it (fp16), so a vector
    does not depend on whether its embedding was cached."""
    pooled: dict[str, tuple[np.ndarray, str]] = {}
    batch: list[tuple[str, torch.Tensor]] = []
    with progress_bar(progress) as bar:
        task = bar.add_task(f"{model.name} selection features", total=len(images))
        for position, (sid, pixels) in enumerate(images, start=1):
            batch.append((sid, model.prepare(pixels)[0]))
            if len(batch) == batch_size or position == len(images):
                embeddings = model.encode(torch.stack([image for _, image in batch])).cpu().numpy()
                for (done, _), embedding in zip(batch, embeddings):
                    pooled[done] = (pooled_feature(embedding.astype(np.float16)), model.precision)
                bar.advance(task, len(batch))
                batch = []
    return pooled


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
        self.raw = raw
        self.catalogue = catalogue
        self.sample_ids = sample_ids
        self.plans = plans

    def only(self, sample_ids: list[str]) -> _RawSlices:
        """The same reader for a subset of its samples."""
        return _RawSlices(self.raw, self.catalogue, sample_ids, self.plans)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for case_id, samples in self.by_case.items():
            normalised = self.plans.normalise(read_image(self.cases[case_id].image)[0])
            axis = self.plans.slicing_axis
            for sid, index in samples:
                pixels = normalised if index is None else take_slice(normalised, axis, index)
                yield sid, np.ascontiguousarray(pixels, dtype=np.float32)
