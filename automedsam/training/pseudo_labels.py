"""Pseudo-labels: a mask per training box that says more about the object's shape than the box does.

Each target names its source in plans.json (`pseudo_label`): "box_prompt", "inscribed_ellipse" or "none".

box_prompt: the frozen foundation model prompted with each training box on its cached embedding. A tight box says
where the object is but not its shape; the frozen model prompted with that box says a lot about the shape
(Gaillochet et al. 2025). The mask is computed once per sample and target, in the decoder's low-res frame, from the
cached embedding (decoder only, no re-encoding), thresholded at probability 0.5 and cut to its box.

inscribed_ellipse: the ellipse inscribed in each box. For the filled region of a ring, whose box prompt returns the
cavity inside (planning.planner.RING_PSEUDO_LABEL_REASON) but whose shape is close to that ellipse (the
fingerprint's `filled_ellipse_dice`), and for objects rounder than what box prompts achieve (the planner's rules:
documentation/planning.md, targets).

Either supervises the prompt module with Dice+BCE beside the box priors. Several boxes in one sample (one per
component) give the union of their masks; a sample without a box gets an empty mask.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from automedsam.boxes import rasterise_ellipses

if TYPE_CHECKING:
    from automedsam.foundation.base import FoundationModel

DECODE_BATCH = 16


def pseudo_labels(source: str, foundation: FoundationModel, embeddings: torch.Tensor,
                  boxes_low_res: Sequence[Sequence[Sequence[int]]]) -> torch.Tensor:
    """(N, 1, L, L) float 0/1 pseudo-labels of one target from the named source ("none" is not a source)."""
    if source == "inscribed_ellipse":
        return ellipse_pseudo_labels(boxes_low_res, foundation.low_res_size)
    return box_pseudo_labels(foundation, embeddings, boxes_low_res)


def ellipse_pseudo_labels(boxes_low_res: Sequence[Sequence[Sequence[int]]], size: int) -> torch.Tensor:
    """Per-sample low-res boxes -> (N, 1, size, size) float 0/1 masks of the ellipses inscribed in them."""
    masks = [rasterise_ellipses(boxes, (size, size)) for boxes in boxes_low_res]
    return torch.from_numpy(np.stack(masks)[:, None].astype(np.float32)) if masks else torch.zeros((0, 1, size, size))


@torch.no_grad()
def box_pseudo_labels(
    foundation: FoundationModel,
    embeddings: torch.Tensor,
    boxes_low_res: Sequence[Sequence[Sequence[int]]],
    batch_size: int = DECODE_BATCH,
) -> torch.Tensor:
    """(N, 256, 64, 64) embeddings and per-sample low-res boxes -> (N, 1, L, L) float 0/1 masks on the CPU."""
    size = foundation.low_res_size
    masks = torch.zeros((len(boxes_low_res), 1, size, size), dtype=torch.float32)
    prompts = [(index, box) for index, boxes in enumerate(boxes_low_res) for box in boxes]
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        indices = [index for index, _ in chunk]
        sparse, dense = foundation.box_prompt(torch.tensor([box for _, box in chunk], dtype=torch.float32))
        batch = embeddings[indices].to(foundation.device, torch.float32)
        foreground = (foundation.decode(batch, sparse, dense) > 0).cpu()
        for row, (index, (x0, y0, x1, y1)) in enumerate(chunk):
            inside = torch.zeros((size, size), dtype=torch.bool)
            inside[y0:y1 + 1, x0:x1 + 1] = True
            masks[index, 0][foreground[row, 0] & inside] = 1.0
    return masks
