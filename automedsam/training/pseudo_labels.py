"""Pseudo-labels from the frozen foundation model: each training box prompted on its cached embedding.

A tight box says where the object is but not its shape; the frozen model prompted with that box says a lot about
the shape (Gaillochet et al. 2025). The mask is computed once per sample and target, in the decoder's low-res
frame, from the cached embedding (decoder only, no re-encoding), thresholded at probability 0.5 and cut to its
box, and supervises the prompt module with Dice+BCE beside the box priors. Several boxes in one sample (one per
component) give the union of their masks; a sample without a box gets an empty mask. Ring targets get none: the
prompt with a filled ring's box returns the cavity inside (planning.RING_PSEUDO_LABEL_REASON).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from automedsam.foundation import FoundationModel

DECODE_BATCH = 16


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
