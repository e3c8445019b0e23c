"""A fold's samples, loaded once into memory: a few-shot run is far too small to justify per-step disk reads.

Per sample: the cached image embedding, its frame, and per target the boxes in the decoder's 256x256 low-res
frame (where prompts and losses live). The region masks are read only when asked for (`masks`: the `fullsup`
comparison variant, which trains on them low-res and reports its validation Dice on them); every other trainer
never opens a mask, so a labelled sample gives it nothing but its boxes. A ring target (ACDC myocardium) is learnt
as its filled region; its box equals the region's box, so the boxes of the target's own label are used.
A training set may hold each sample's augmentation views too: they are rows like any other, after the samples
themselves, and `versions` says which rows are versions of which sample.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from automedsam.errors import AutomedsamError
from automedsam.files import load_json, permission_denied_error
from automedsam.folds import SPLITS_FILE
from automedsam.foundation.frame import frame_pixel
from automedsam.plans import View
from automedsam.samples import view_sample_id

if TYPE_CHECKING:
    from automedsam.foundation.base import FoundationModel
    from automedsam.foundation.frame import Frame

_SHOWN_IDS = 5


@dataclass
class TargetSamples:
    """One target's labels over a list of samples (same order as the samples)."""

    boxes_low_res: list[list[list[int]]]  # per sample, its boxes [x0, y0, x1, y1] in the low-res frame
    boxes_original: list[list[list[int]]]  # per sample, the same boxes in the sample's own pixels
    masks_low_res: torch.Tensor | None  # (N, 1, L, L) float 0/1 when masks were read and every sample has one
    masks_original: list[np.ndarray | None]  # per sample, bool (H, W) region mask; None when not read or absent
    pseudo_low_res: torch.Tensor | None = None  # (N, 1, L, L) float 0/1 box-prompted masks, when the loss uses them


@dataclass
class SampleSet:
    """A list of samples (rows) held in memory; embeddings are kept as stored (fp16) and cast per batch."""

    sample_ids: list[str]
    embeddings: torch.Tensor  # (N, 256, 64, 64) fp16
    frames: list[Frame]
    targets: dict[int, TargetSamples]  # key: target label
    versions: list[list[int]]  # per sample loaded for itself: its row, then the rows of its views

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def originals(self) -> int:
        """How many samples were loaded for themselves (rows 0 .. originals - 1); the rest are their views."""
        return len(self.versions)

    @property
    def has_masks(self) -> bool:
        """True when every sample's mask was read (the condition for Dice and for full supervision)."""
        return len(self) > 0 and all(
            mask is not None for target in self.targets.values() for mask in target.masks_original
        )

    def embedding_batch(self, indices: Sequence[int], device: torch.device) -> torch.Tensor:
        return self.embeddings[list(indices)].to(device=device, dtype=torch.float32)


def load_sample_set(
    preprocessed_dir: Path,
    plans: dict[str, Any],
    sample_ids: Sequence[str],
    foundation: FoundationModel,
    *,
    masks: bool = False,
    views: Sequence[View] = (),
) -> SampleSet:
    """Read the samples' (and their `views`') json, embeddings and, with `masks`, their masks (original size and in
    the low-res frame); AutomedsamError listing what is missing."""
    preprocessed_dir = Path(preprocessed_dir)
    originals = list(sample_ids)
    sample_ids = originals + [view_sample_id(sid, view) for sid in originals for view in views]
    embedding_dir = preprocessed_dir / "embeddings" / plans["foundation_model"]["name"]
    _require_files(preprocessed_dir, [preprocessed_dir / "samples" / f"{sid}.json" for sid in sample_ids], "sample")
    _require_files(preprocessed_dir, [embedding_dir / f"{sid}.npy" for sid in sample_ids], "embedding")
    targets = plans["targets"]
    per_target: dict[int, TargetSamples] = {
        int(t["label"]): TargetSamples([], [], None, []) for t in targets
    }
    low_res_stacks: dict[int, list[np.ndarray]] = {int(t["label"]): [] for t in targets}
    embeddings = []
    frames = []
    for sample_id in sample_ids:
        meta = _read_json(preprocessed_dir / "samples" / f"{sample_id}.json")
        frame = foundation.frame_for(tuple(meta["shape"]))
        frames.append(frame)
        embeddings.append(_read_embedding(embedding_dir / f"{sample_id}.npy", foundation))
        has_mask = masks and meta.get("has_mask")
        label_map = _read_mask(preprocessed_dir / "samples" / f"{sample_id}.npz") if has_mask else None
        for target in targets:
            label = int(target["label"])
            boxes = [list(map(int, entry["box"])) for entry in meta["boxes"] if int(entry["label"]) == label]
            entry = per_target[label]
            entry.boxes_original.append(boxes)
            entry.boxes_low_res.append([low_res_box(foundation, box, frame) for box in boxes])
            region = None if label_map is None else np.isin(label_map, target["region"])
            entry.masks_original.append(region)
            if region is not None:
                low_res_stacks[label].append(foundation.mask_to_low_res(region.astype(np.uint8), frame))
    for label, stack in low_res_stacks.items():
        if stack and len(stack) == len(sample_ids):
            per_target[label].masks_low_res = torch.from_numpy(np.stack(stack)[:, None].astype(np.float32))
    if not embeddings:
        return SampleSet([], torch.empty((0, *foundation.embedding_shape), dtype=torch.float16), [], per_target, [])
    return SampleSet(sample_ids, torch.stack(embeddings), frames, per_target, _versions(len(originals), len(views)))


def _versions(count: int, views: int) -> list[list[int]]:
    """Rows of each sample's versions: the sample's own row, then its views, stored after all samples by sample."""
    return [[index, *range(count + index * views, count + (index + 1) * views)] for index in range(count)]


def low_res_box(foundation: FoundationModel, box: Sequence[int], frame: Frame) -> list[int]:
    """An original-pixel box in the low-res frame as ints, clipped and never inverted."""
    limit = foundation.low_res_size - 1
    x0, y0, x1, y1 = (min(max(frame_pixel(v), 0), limit) for v in foundation.to_low_res(tuple(box), frame))
    return [x0, y0, max(x0, x1), max(y0, y1)]


def _require_files(preprocessed_dir: Path, paths: list[Path], what: str) -> None:
    missing = [path for path in paths if not path.is_file()]
    if missing:
        shown = ", ".join(path.name for path in missing[:_SHOWN_IDS])
        more = f" and {len(missing) - _SHOWN_IDS} more" if len(missing) > _SHOWN_IDS else ""
        raise AutomedsamError(
            f"{len(missing)} {what} file(s) missing in {missing[0].parent} ({shown}{more}). "
            f"Run {_finishing_command(preprocessed_dir)} to finish preprocessing."
        )


def _finishing_command(preprocessed_dir: Path) -> str:
    """--preprocess-only keeps the stored plans and draw (--shots, --seed, hand edits), where a replan would draw
    again from the defaults; a dataset annotated on the page is planned again instead: its boxes changed the raw data,
    which --preprocess-only refuses, and its replan keeps the recorded draw."""
    splits_path = preprocessed_dir / SPLITS_FILE
    splits = load_json(splits_path, "splits file") if splits_path.is_file() else None
    interactive = isinstance(splits, dict) and "interactive" in splits
    return f"automedsam_plan_and_preprocess -d {preprocessed_dir.name}{'' if interactive else ' --preprocess-only'}"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AutomedsamError(f"Sample file {path} is not valid JSON ({exc}). Rerun preprocessing.") from None


def _read_embedding(path: Path, foundation: FoundationModel) -> torch.Tensor:
    try:
        array = np.load(path, allow_pickle=False)
    except PermissionError:  # refused, not damaged: deleting it would only make preprocessing compute it again
        raise permission_denied_error(path) from None
    except (ValueError, OSError) as exc:
        raise AutomedsamError(f"Embedding {path} cannot be read ({exc}). Delete it and rerun preprocessing.") from None
    if tuple(array.shape) != tuple(foundation.embedding_shape):
        raise AutomedsamError(
            f"Embedding {path} has shape {array.shape}, expected {tuple(foundation.embedding_shape)} for "
            f"'{foundation.name}'. Delete the embeddings folder and rerun preprocessing."
        )
    return torch.from_numpy(array.astype(np.float16))


def _read_mask(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz["mask"]
    except PermissionError:  # refused, not damaged: preprocessing again would not make it readable
        raise permission_denied_error(path) from None
    except (KeyError, ValueError, OSError) as exc:
        raise AutomedsamError(f"Sample {path} has no readable mask ({exc}). Rerun preprocessing.") from None
