"""Image embeddings computed once per sample and model, shared by every fold, label and trainer.

Preprocessing writes the cache and records, in the preprocessed folder's state file, the plans key its embeddings
were made under (`Plans.embeddings_key`); when the plans change it clears them and records the new key (planning
does the same for an interactive dataset awaiting its boxes, which is not preprocessed yet). Readers that come
later (the review, the box preview, automedsam_predict --dataset-images) use it through `PlannedEmbeddingCache`,
which reads and adds embeddings only while that record names their own plans, and none older than its case's image
(an image imported again under its name).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from automedsam.errors import AutomedsamError
from automedsam.files import holding_lock, load_json, save_npy
from automedsam.foundation.base import EMBEDDING_SHAPE, FoundationModel
from automedsam.samples import case_of

if TYPE_CHECKING:
    from automedsam.plans import Plans

PREPROCESSING_STATE_FILE = "preprocessing_state.json"  # its "embeddings" entry: model name -> plans key
RECORD_LOCK_FILE = ".embeddings.lock"


class EmbeddingCache:
    """`root/embeddings/<model_name>/<sample_id>.npy`, fp16 (256, 64, 64), written atomically."""

    def __init__(self, root: str | Path, model_name: str) -> None:
        self.root = Path(root)
        self.model_name = model_name
        self.directory = self.root / "embeddings" / model_name

    def path(self, sample_id: str) -> Path:
        return self.directory / f"{sample_id}.npy"

    def get(self, sample_id: str) -> np.ndarray | None:
        """The stored embedding, or None when absent or unreadable (it is then recomputed)."""
        path = self.path(sample_id)
        if not path.is_file():
            return None
        try:
            embedding = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            return None
        return embedding if embedding.shape == EMBEDDING_SHAPE else None

    def older_than(self, sample_id: str, image: Path | None) -> bool:
        """Whether the stored embedding was written before `image` (its case's raw image) last changed: it is then
        another image's (a case imported again under its name). False when either file is absent."""
        try:
            return image is not None and self.path(sample_id).stat().st_mtime_ns < image.stat().st_mtime_ns
        except OSError:  # no embedding stored (it is encoded), or the image gone (reading it will say so)
            return False

    def drop_older_than_images(self, sample_ids: Iterable[str], images: Mapping[str, Path]) -> int:
        """Delete the embeddings of `sample_ids` stored before their case's image (case id -> raw image) last
        changed, so that they are encoded again; returns how many went."""
        dropped = 0
        for sample_id in sample_ids:
            if self.older_than(sample_id, images.get(case_of(sample_id))):
                self.path(sample_id).unlink(missing_ok=True)
                dropped += 1
        return dropped

    def put(self, sample_id: str, embedding: np.ndarray | torch.Tensor) -> None:
        if isinstance(embedding, torch.Tensor):
            embedding = embedding.detach().float().cpu().numpy()
        embedding = np.asarray(embedding)
        if embedding.shape != EMBEDDING_SHAPE:
            raise ValueError(f"embedding of {sample_id} has shape {embedding.shape}, expected {EMBEDDING_SHAPE}")
        save_npy(self.path(sample_id), embedding.astype(np.float16))

    def compute_missing(
        self,
        model: FoundationModel,
        items: Iterable[tuple[str, np.ndarray]],
        *,
        batch_size: int = 8,
        progress: bool = True,
    ) -> int:
        """Encode the samples whose embedding is not stored yet; returns how many were computed (progress bar on
        stderr, like every other bar)."""
        total = len(items) if hasattr(items, "__len__") else None
        computed = 0
        batch: list[tuple[str, torch.Tensor]] = []
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not progress,
        ) as bar:
            task = bar.add_task(f"{self.model_name} embeddings", total=total)
            for sample_id, image2d in items:
                if self.get(sample_id) is not None:
                    bar.advance(task)
                    continue
                batch.append((sample_id, model.prepare(image2d)[0]))
                if len(batch) == batch_size:
                    computed += self._encode_and_store(model, batch)
                    bar.advance(task, len(batch))
                    batch = []
            if batch:
                computed += self._encode_and_store(model, batch)
                bar.advance(task, len(batch))
        return computed

    def _encode_and_store(self, model: FoundationModel, batch: list[tuple[str, torch.Tensor]]) -> int:
        embeddings = model.encode(torch.stack([image for _, image in batch]))
        for (sample_id, _), embedding in zip(batch, embeddings):
            self.put(sample_id, embedding)
        return len(batch)


def recorded_embeddings_key(root: str | Path, model_name: str) -> str | None:
    """The plans key the model's embedding cache in the preprocessed folder `root` was made under; None when none is
    recorded."""
    path = Path(root) / PREPROCESSING_STATE_FILE
    state = load_json(path, "preprocessing state") if path.is_file() else {}
    recorded = state.get("embeddings") if isinstance(state, dict) else None
    key = recorded.get(model_name) if isinstance(recorded, dict) else None
    return key if isinstance(key, str) else None


@contextmanager
def embeddings_record_held(root: str | Path) -> Iterator[None]:
    """Hold while changing which plans the cache's embeddings belong to (clearing them, recording a key), and while
    a reader adds one: an embedding made under the old plans never lands in a cache recorded under new ones."""
    with holding_lock(Path(root) / RECORD_LOCK_FILE):
        yield


class PlannedEmbeddingCache:
    """A preprocessed folder's embedding cache seen through one model's plans: an embedding is read, or added, only
    while the folder records that its embeddings were made under these plans (preprocessing may replan beside a
    prediction) and by a model computing in the plans' precision (bf16 planned on a GPU runs in fp32 on a CPU without
    bf16). Samples not stored yet are encoded and added, so each is encoded once for every later reader."""

    def __init__(self, root: str | Path, plans: Plans, *, images: Mapping[str, Path] | None = None) -> None:
        """`images`: case id -> its raw image file; an embedding stored before its case's image was written is
        another image's, and is encoded again."""
        self.cache = EmbeddingCache(root, plans.foundation_name)
        self.key = plans.embeddings_key()
        self.precision = plans["foundation_model"].get("precision", "fp32")
        self.images = images or {}
        self._read: dict[str, int | None] = {}  # case id -> its image's mtime when its pixels were read (note_read)

    def note_read(self, case_id: str) -> None:
        """Call before reading a case's image: its embeddings added later take the image's time as it was then, so
        an image imported again while it is being encoded leaves an embedding older than itself (encoded again)."""
        image = self.images.get(case_id)
        try:
            self._read[case_id] = image.stat().st_mtime_ns if image is not None else None
        except OSError:
            self._read.pop(case_id, None)

    def holds_these_plans(self) -> bool:
        try:
            return recorded_embeddings_key(self.cache.root, self.cache.model_name) == self.key
        except AutomedsamError:  # a damaged state file: the cache is not trusted, every sample is encoded
            return False

    def get(self, sample_id: str) -> np.ndarray | None:
        """The stored embedding, never one made under other plans: the record is checked before and after the read
        (preprocessing records new plans before it stores their first embedding), so no lock, and a read-only
        folder serves as well."""
        if not self.holds_these_plans() or self.cache.older_than(sample_id, self.images.get(case_of(sample_id))):
            return None
        embedding = self.cache.get(sample_id)
        return embedding if embedding is not None and self.holds_these_plans() else None

    def add(self, sample_id: str, embedding: np.ndarray) -> None:
        """Store `embedding` if the cache still belongs to these plans; a failed write (a full disk, no permission)
        only loses the saving."""
        if not self.cache.root.is_dir():
            return
        try:
            with embeddings_record_held(self.cache.root):
                if self.holds_these_plans():
                    self.cache.put(sample_id, embedding)
                    read = self._read.get(case_of(sample_id))
                    if read is not None:
                        os.utime(self.cache.path(sample_id), ns=(read, read))
        except (OSError, AutomedsamError):
            return

    def embeddings(self, model: FoundationModel, sample_ids: Sequence[str], planes: Sequence[np.ndarray], *,
                   add: bool = True) -> torch.Tensor:
        """(N, 256, 64, 64) float32 embeddings of the samples (`planes` normalised as the plans say): read where
        stored, else encoded in one batch and (with `add`) stored. Fresh ones are rounded to fp16 as stored, so a
        result does not depend on whether an embedding was cached."""
        usable = model.precision == self.precision
        found = [self.get(sample_id) if usable else None for sample_id in sample_ids]
        missing = [index for index, embedding in enumerate(found) if embedding is None]
        if missing:
            encoded = model.encode(torch.stack([model.prepare(planes[index])[0] for index in missing]))
            for index, embedding in zip(missing, encoded.cpu().numpy().astype(np.float16)):
                found[index] = embedding
                if add and usable:
                    self.add(sample_ids[index], embedding)
        return torch.from_numpy(np.stack(found).astype(np.float32))
