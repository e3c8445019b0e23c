"""MedSAM ViT-B and the original SAM ViT-B/L/H at 1024 x 1024, from a checkpoint file the user gives.

MedSAM was trained on [0, 1] min-max images without mean/std, resized to the whole 1024 x 1024 square (its own
inference code stretches every image); SAM expects 0-255 images standardised with its pixel mean/std, resized by
the longest side and zero padded (segment_anything's ResizeLongestSide). The registry says which.
"""
from __future__ import annotations

from pathlib import Path

import torch
from segment_anything import sam_model_registry

from automedsam.errors import AutomedsamError
from automedsam.foundation.base import FoundationModel, placement
from automedsam.foundation.checkpoints import load_strict, read_state_dict
from automedsam.foundation.registry import FOUNDATION_MODELS

SAM_VARIANTS: dict[str, tuple[str, str, str]] = {  # name: (architecture, pixel scaling, usual weights file)
    "medsam_vit_b": ("vit_b", "minmax", "medsam_vit_b.pth"),
    "sam_vit_b": ("vit_b", "sam", "sam_vit_b_01ec64.pth"),
    "sam_vit_l": ("vit_l", "sam", "sam_vit_l_0b3195.pth"),
    "sam_vit_h": ("vit_h", "sam", "sam_vit_h_4b8939.pth"),
}


def build_sam_model(
    name: str, checkpoint: str | Path | None, *, device: str | torch.device | None, precision: str, resize: str
) -> FoundationModel:
    """Build `name` (a key of SAM_VARIANTS) with segment_anything and strictly load `checkpoint` into it."""
    device = placement(device, precision)
    architecture, pixel_scaling, usual_file = SAM_VARIANTS[name]
    if checkpoint is None:
        raise AutomedsamError(
            f"Foundation model '{name}' needs its weights file: pass --foundation-checkpoint PATH/{usual_file} "
            "(automedsam never downloads weights), or use the default foundation model 'litemedsam'."
        )
    state = read_state_dict(checkpoint, name)
    network = sam_model_registry[architecture](checkpoint=None)
    load_strict(network, state, checkpoint, name)
    return FoundationModel(name, network, FOUNDATION_MODELS[name].input_size, pixel_scaling, device, precision,
                           resize)
