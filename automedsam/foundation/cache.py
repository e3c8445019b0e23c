"""Image embeddings computed once per sample and model, shared by every fold, label and trainer.

Preprocessing writes the cache and records, in the preprocessed folder's state file, the plans key its embeddings
were made under (`Plans.embeddings_key`); when the plans change it clears them and records the new key (planning
does the same for an interactive dataset awaiting its boxes, which is not preprocessed yet). Readers that come
later (the review, the box preview, automedsam_predict --dataset-images) use it through `PlannedEmbeddingCache`,
which reads and adds embeddings only while that record names their own plans, and none encoded from another image
than its case's image file holds now (an image imported again under its name).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from automedsam.errors import AutomedsamError
from automedsam.files import atomic_path, files_digest, holding_lock, load_json, save_npy
from automedsam.foundation.base import EMBEDDING_SHAPE, FoundationModel
from automedsam.progress import progress_bar
from automedsam.samples import IMAGE_STAMP_SUFFIX, case_of

if TYPE_CHECKING:
    from automedsam.plans import Plans

PREPROCESSING_STATE_FILE = "preprocessing_state.json"  # its "embeddings" entry: model name -> plans key
RECORD_LOCK_FILE = ".embeddings.lock"


class EmbeddingCache:
    """`root/embeddings/<model_name>/<sample_id>.npy`, fp16 (256, 64, 64), written atomically, with the digest of
    the image file it was encoded from beside it (`<sample_id>.image`) where the writer knew that file."""

    def __init__(self, root: str | Path, model_name: str) -> None:
        self.root = Path(root)
        self.model_name = model_name
        self.directory = self.root / "embeddings" / model_name

    def path(self, sample_id: str) -> Path:
        return self.directory / f"{sample_id}.npy"

    def stamp_path(self, sample_id: str) -> Path:
        return self.directory / f"{sample_id}{IMAGE_STAMP_SUFFIX}"

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

    def outdated(self, sample_id: str, image: Path | None) -> bool:
        """Whether the stored embedding is another image's than `image` (its case's raw image) holds now: a case
        imported again under its name, even from an older-dated file (cp -p, rsync -a). Told by the image digest
        stored beside it; by time for an embedding stored without one (written before `image` last changed).
        False when either file is absent."""
        try:
            if image is None or not image.is_file() or not self.path(sample_id).is_file():
                return False  # nothing stored (it is encoded), or the image gone (reading it will say so)
            try:
                return self.stamp_path(sample_id).read_text(encoding="utf-8").strip() != files_digest([image])
            except FileNotFoundError:
                return self.path(sample_id).stat().st_mtime_ns < image.stat().st_mtime_ns
        except (OSError, UnicodeDecodeError):  # an unreadable stamp: encoded again
            return True

    def drop_outdated(self, sample_ids: Iterable[str], images: Mapping[str, Path]) -> int:
        """Delete the embeddings of `sample_ids` that are another image's than their case's image (case id -> raw
        image) holds now, so that they are encoded again; returns how many went."""
        dropped = 0
        for sample_id in sample_ids:
            if self.outdated(sample_id, images.get(case_of(sample_id))):
                self.discard(sample_id)
                dropped += 1
        return dropped

    def discard(self, sample_id: str) -> None:
        self.path(sample_id).unlink(missing_ok=True)
        self.stamp_path(sample_id).unlink(missing_ok=True)

    def put(self, sample_id: str, embedding: np.ndarray | torch.Tensor, *, image_digest: str | None = None) -> None:
        """Store `embedding` of the image file whose `files_digest` (taken before its pixels were read) is
        `image_digest`; without one, its freshness is told by time. The old stamp goes first: read between the
        two writes, the new embedding is judged by time, never by the old image's digest."""
        if isinstance(embedding, torch.Tensor):
            embedding = embedding.detach().float().cpu().numpy()
        embedding = np.asarray(embedding)
        if embedding.shape != EMBEDDING_SHAPE:
            raise ValueError(f"embedding of {sample_id} has shape {embedding.shape}, expected {EMBEDDING_SHAPE}")
        self.stamp_path(sample_id).unlink(missing_ok=True)
        save_npy(self.path(sample_id), embedding.astype(np.float16))
        if image_digest is not None:
            with atomic_path(self.stamp_path(sample_id)) as tmp:
                tmp.write_text(image_digest, encoding="utf-8")

    def compute_missing(
        self,
        model: FoundationModel,
        items: Iterable[tuple[str, np.ndarray]],
        *,
        image_digests: Mapping[str, str] | None = None,
        batch_size: int = 8,
        progress: bool = True,
    ) -> int:
        """Encode the samples whose embedding is not stored yet; returns how many were computed (progress bar on
        stderr, like every other bar). `image_digests`: sample id -> digest of the image file its pixels came
        from, stored beside each embedding."""
        total = len(items) if hasattr(items, "__len__") else None
        computed = 0
        batch: list[tuple[str, torch.Tensor]] = []
        with progress_bar(progress) as bar:
            task = bar.add_task(f"{self.model_name} embeddings", total=total)
            for sample_id, image2d in items:
                if self.get(sample_id) is not None:
                    bar.advance(task)
                    continue
                batch.append((sample_id, model.prepare(image2d)[0]))
                if len(batch) == batch_size:
                    computed += self._encode_and_store(model, batch, image_digests=image_digests or {})
                    bar.advance(task, len(batch))
                    batch = []
            if batch:
                computed += self._encode_and_store(model, batch, image_digests=image_digests or {})
                bar.advance(task, len(batch))
        return computed

    def _encode_and_store(self, model: FoundationModel, batch: list[tuple[str, torch.Tensor]], *,
                          image_digests: Mapping[str, str]) -> int:
        embeddings = model.encode(torch.stack([image for _, image in batch]))
        for (sample_id, _), embedding in zip(batch, embeddings):
            self.put(sample_id, embedding, image_digest=image_digests.get(sample_id))
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
        """`images`: case id -> its raw image file; an embedding of another image than that file holds now (the
        case imported again) is encoded again."""
        self.cache = EmbeddingCache(root, plans.foundation_name)
        self.key = plans.embeddings_key()
        self.precision = plans["foundation_model"].get("precision", "fp32")
        self.images = images or {}
        self._read: dict[str, str] = {}  # case id -> its image's digest when its pixels were read (note_read)

    def note_read(self, case_id: str) -> str | None:
        """Call before reading a case's image: its embeddings added later carry the image's digest as it was then,
        so an image imported again while it is being encoded leaves an outdated embedding (encoded again). Noted per
        case, for one reader at a time; readers in parallel threads pass the digest it returns to `embeddings`."""
        image = self.images.get(case_id)
        if image is not None and image.is_file():
            self._read[case_id] = files_digest([image])
        else:
            self._read.pop(case_id, None)
        return self._read.get(case_id)

    def holds_these_plans(self) -> bool:
        try:
            return recorded_embeddings_key(self.cache.root, self.cache.model_name) == self.key
        except AutomedsamError:  # a damaged state file: the cache is not trusted, every sample is encoded
            return False

    def get(self, sample_id: str) -> np.ndarray | None:
        """The stored embedding, never one made under other plans: the record is checked before and after the read
        (preprocessing records new plans before it stores their first embedding), so no lock, and a read-only
        folder serves as well."""
        if not self.holds_these_plans() or self.cache.outdated(sample_id, self.images.get(case_of(sample_id))):
            return None
        embedding = self.cache.get(sample_id)
        return embedding if embedding is not None and self.holds_these_plans() else None

    def add(self, sample_id: str, embedding: np.ndarray, *, image_digest: str | None = None) -> None:
        """Store `embedding` if the cache still belongs to these plans, with its image's digest: `image_digest`, else
        as noted when it was read, else as the image is now; a failed write (a full disk, no permission) only loses
        the saving."""
        if not self.cache.root.is_dir():
            return
        case_id = case_of(sample_id)
        image = self.images.get(case_id)
        digest = image_digest or self._read.get(case_id) or (
            files_digest([image]) if image is not None and image.is_file() else None)
        try:
            with embeddings_record_held(self.cache.root):
                if self.holds_these_plans():
                    self.cache.put(sample_id, embedding, image_digest=digest)
        except (OSError, AutomedsamError):
            return

    def embeddings(self, model: FoundationModel, sample_ids: Sequence[str], planes: Sequence[np.ndarray], *,
                   add: bool = True, image_digests: Mapping[str, str | None] | None = None) -> torch.Tensor:
        """(N, 256, 64, 64) float32 embeddings of the samples (`planes` normalised as the plans say): read where
        stored, else encoded in one batch and (with `add`) stored, stamped with `image_digests` (sample id -> what
        `note_read` returned before its plane was read) where given. Fresh ones are rounded to fp16 as stored, so a
        result does not depend on whether an embedding was cached."""
        usable = model.precision == self.precision
        found = [self.get(sample_id) if usable else None for sample_id in sample_ids]
        missing = [index for index, embedding in enumerate(found) if embedding is None]
        if missing:
            encoded = model.encode(torch.stack([model.prepare(planes[index])[0] for index in missing]))
            for index, embedding in zip(missing, encoded.cpu().numpy().astype(np.float16)):
                found[index] = embedding
                if add and usable:
                    self.add(sample_ids[index], embedding, image_digest=(image_digests or {}).get(sample_ids[index]))
        return torch.from_numpy(np.stack(found).astype(np.float32))
