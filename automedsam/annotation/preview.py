"""The frozen model's box-prompted mask, shown while a box is drawn, and the boxes it proposes at a click: one
encoder pass per sample.

The embedding comes from the preprocessed folder's cache when it holds the sample under the session's plans;
otherwise the sample is encoded once and its embedding added there (while the cache still records these plans:
foundation.cache), so training's review and Segment images do not encode it again. The last samples' embeddings
also stay in memory for the session's later boxes, while their image files are unchanged.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from automedsam.box_proposal import propose_boxes
from automedsam.foundation.base import FoundationModel
from automedsam.foundation.cache import PlannedEmbeddingCache
from automedsam.plans import Plans
from automedsam.samples import case_of

KEPT_EMBEDDINGS = 64  # samples whose embedding stays in memory (4 MB each in fp32)
ImageStamp = tuple[int, int, int] | None  # an image file's modification and change times and size; None: unknown


@dataclass(frozen=True)
class ImageRead:
    """A sample's image file as it was before its pixels were read: its stamp (the embeddings kept in memory) and its
    digest (files.files_digest: the cache's stamp), None where unknown."""
    stamp: ImageStamp
    digest: str | None


class BoxPreview:
    """Box-prompted masks of the planned foundation model, built on first use."""

    def __init__(self, plans: Plans, preprocessed_dir: Path,
                 foundation: FoundationModel | Callable[[], FoundationModel] | None = None, *,
                 device: str | None = None, images: Mapping[str, Path] | None = None) -> None:
        self.plans = plans
        self.device = device
        self.cache = PlannedEmbeddingCache(preprocessed_dir, plans, images=images)
        self._foundation = foundation
        self._embeddings: dict[str, tuple[ImageStamp, torch.Tensor]] = {}  # sample id -> (its image's stamp, embedding)
        self._encoding: dict[str, threading.Lock] = {}  # per sample, held while it is encoded
        self._lock = threading.Lock()

    @property
    def model(self) -> FoundationModel:
        with self._lock:
            if self._foundation is None:
                self._foundation = self.plans.build_foundation_model(device=self.device)
            elif not isinstance(self._foundation, FoundationModel):
                self._foundation = self._foundation()
            return self._foundation

    def note_read(self, sample_id: str) -> ImageRead:
        """Call before reading the sample's pixels, and hand what it returns to `mask` or `proposals`: their
        embedding then serves, in memory and in the cache, the image file as it was when read, so one imported again
        during the read is encoded again instead of keeping the replaced pixels' embedding under its new stamp. Per
        request: requests for several slices of one volume run in parallel threads."""
        return ImageRead(self._image_stamp(sample_id), self.cache.note_read(case_of(sample_id)))

    @torch.no_grad()
    def mask(self, sample_id: str, normalised: np.ndarray, box: Sequence[int], *, read_as: ImageRead) -> np.ndarray:
        """bool (H, W): the model's mask for `box` ([x0, y0, x1, y1] in the sample's pixels); `read_as`: what
        `note_read` returned before `normalised` was read."""
        model = self.model
        frame = model.frame_for(normalised.shape[:2])
        embedding = self._embedding(model, sample_id, normalised, read_as)
        low_res_box = torch.tensor([model.to_low_res(list(box), frame)], dtype=torch.float32, device=model.device)
        sparse, dense = model.box_prompt(low_res_box)
        logits = model.decode(embedding, sparse, dense)
        return (model.logits_to_original(logits, frame)[0, 0] > 0).cpu().numpy()

    def proposals(self, sample_id: str, normalised: np.ndarray, point: Sequence[int], *,
                  read_as: ImageRead) -> list[list[int]]:
        """The boxes ([x0, y0, x1, y1] in the sample's pixels) of what the model outlines at a click, best first;
        `read_as` as for `mask`."""
        model = self.model
        frame = model.frame_for(normalised.shape[:2])
        return propose_boxes(model, self._embedding(model, sample_id, normalised, read_as), frame, point)

    def _embedding(self, model: FoundationModel, sample_id: str, normalised: np.ndarray,
                   read_as: ImageRead) -> torch.Tensor:
        """One encoder pass per sample, also when two boxes drawn in quick succession ask for it at once; one kept
        in memory, or stored, serves the image file as `read_as` (taken before `normalised` was read) says it was."""
        with self._lock:
            encoding = self._encoding.setdefault(sample_id, threading.Lock())
        with encoding:
            with self._lock:
                kept = self._embeddings.get(sample_id)
            if kept is not None and kept[0] == read_as.stamp:
                return kept[1]
            embedding = self.cache.embeddings(model, [sample_id], normalised[None],
                                              image_digests={sample_id: read_as.digest}).to(model.device)
            with self._lock:
                if sample_id not in self._embeddings and len(self._embeddings) >= KEPT_EMBEDDINGS:
                    dropped = next(iter(self._embeddings))
                    self._embeddings.pop(dropped)
                    self._encoding.pop(dropped, None)
                self._embeddings[sample_id] = (read_as.stamp, embedding)
            return embedding

    def _image_stamp(self, sample_id: str) -> ImageStamp:
        """The sample's image file as it is now: an embedding kept in memory serves only that file, so an image
        imported again while the page runs is not previewed with the embedding of the image it replaced. The cache's
        mapping is the one the session refreshes when the dataset is read again (a case imported since the start)."""
        image = self.cache.images.get(case_of(sample_id))
        try:
            found = image.stat() if image is not None else None
        except OSError:
            return None
        return None if found is None else (found.st_mtime_ns, found.st_ctime_ns, found.st_size)
