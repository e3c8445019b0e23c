"""Image embeddings computed once per sample and model, shared by every fold, label and trainer."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from automedsam.files import save_npy
from automedsam.foundation.base import EMBEDDING_SHAPE, FoundationModel


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
