"""A tiny trained model for the inference and API tests, in the results-folder format of the contract.

Its prompt modules always emit the box prompt of a fixed box, so the real LiteMedSAM decoder returns a genuine
segmentation (not the empty mask of a randomly initialised module). Target 1 is a ring (trained as the filled
outer square, minus target 2), target 2 the inner square; the two folds use slightly different boxes.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import PromptEncoder, Sam

from automedsam.checkpoint import save_checkpoint
from automedsam.conversion import convert_folder
from automedsam.files import save_json
from automedsam.foundation.base import FoundationModel
from automedsam.foundation.registry import build_foundation_model
from automedsam.io import Geometry, write_image
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.prompt_module import PromptModule, build_prompt_module, modules_state_dict

IMAGE_SHAPE = (60, 80)
OUTER = (20, 15, 59, 44)
INNER = (32, 25, 47, 34)
FOLD_BOXES = {0: {1: OUTER, 2: INNER}, 1: {1: (19, 14, 60, 45), 2: (31, 24, 48, 35)}}
RING_TARGETS = [
    {"label": 1, "name": "ring", "region": [1, 2], "subtract": [2], "per_component": False},
    {"label": 2, "name": "core", "region": [2], "subtract": [], "per_component": False},
]


@functools.lru_cache(maxsize=1)
def shared_foundation() -> FoundationModel:
    """One CPU LiteMedSAM for every test of the session (building it takes seconds)."""
    return build_foundation_model("litemedsam", device="cpu")


def toy_image(seed: int = 0) -> np.ndarray:
    """uint8 (60, 80): dark noisy background, a grey outer square, a bright inner square."""
    rng = np.random.default_rng(seed)
    image = 30 + 10 * rng.standard_normal(IMAGE_SHAPE)
    image[OUTER[1]:OUTER[3] + 1, OUTER[0]:OUTER[2] + 1] = 120
    image[INNER[1]:INNER[3] + 1, INNER[0]:INNER[2] + 1] = 220
    return np.clip(image, 0, 255).astype(np.uint8)


def box_mask(box: tuple[int, int, int, int], shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[box[1]:box[3] + 1, box[0]:box[2] + 1] = True
    return mask


def toy_plans(targets: list[dict] | None = None, axis: int | None = None) -> dict:
    """plans.json with every contract section; only what prediction reads is meaningful."""
    return {
        "plans_name": "toyPlans",
        "dataset_name": "Dataset001_Toy",
        "foundation_model": {"name": "litemedsam", "checkpoint": None, "input_size": 256, "precision": "fp32",
                             "reason": "test"},
        "slicing": {"is_3d": axis is not None, "axis": axis, "reason": "test"},
        "normalization": {"scheme": "percentile_window", "lower": 0.0, "upper": 255.0, "reason": "test"},
        "prompt_module": {"center_channels": 16, "num_points": 1, "reason": "test"},
        "targets": targets if targets is not None else RING_TARGETS,
        "losses": {"empty_bce": {"weight": 1.0}, "tightness": {"weight": 1e-4, "band_width": 5},
                   "box_size": {"weight": 1e-2, "margins": [0.5, 0.9]}, "log_barrier_t": 5.0, "reason": "test"},
        "training": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-4, "epochs": 1, "batch_size": 2,
                     "lr_step_epoch": 1, "lr_gamma": 0.1, "val_every": 1, "seed": 0, "reason": "test"},
        "postprocessing": {"largest_component": {"1": True, "2": True}, "reason": "test"},
    }


def box_prompt_module(foundation: FoundationModel, plans: dict, box: tuple[int, int, int, int]) -> PromptModule:
    """A prompt module whose output is (up to the dense ReLU) the box prompt of `box` on a toy-sized image."""
    module = build_prompt_module(plans)
    frame = foundation.frame_for(IMAGE_SHAPE)
    sparse, dense = foundation.box_prompt(torch.tensor([foundation.to_low_res(box, frame)]))
    with torch.no_grad():
        module.sparse_linear.weight.zero_()
        module.sparse_linear.bias.copy_(sparse.flatten())
        module.dense_conv.weight.zero_()
        module.dense_conv.bias.copy_(dense[0, :, 0, 0])
    return module


def fold_modules(foundation: FoundationModel, plans: dict, fold: int) -> dict[int, PromptModule]:
    return {label: box_prompt_module(foundation, plans, box) for label, box in FOLD_BOXES[fold].items()}


def unannotated_volumes(folder: Path, *, dataset_id: int, shots: int) -> None:
    """Two 4 x 30 x 40 noise volumes imported unannotated (label organ) and planned with `shots` slices to draw."""
    geometry = Geometry(spacing=(1.0, 1.0, 3.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()),
                        kind="sitk")
    for index in range(2):
        volume = np.random.default_rng(index).normal(size=(4, 30, 40)).astype(np.float32)
        write_image(folder / f"vol{index}.nii.gz", volume, geometry)
    convert_folder(folder, dataset_id=dataset_id, name="Vols", label_names=["organ"])
    plan_and_preprocess(dataset_id, shots=shots, folds=2, num_workers=1, plan_only=True, progress=False)


def write_model_folder(results_root: Path, foundation: FoundationModel, dataset: str = "Dataset001_Toy",
                       trainer: str = "default", folds: tuple[int, ...] = (0, 1)) -> Path:
    """results/<dataset>/<trainer>__toyPlans with plans.json, dataset.json, fingerprint.json and fold checkpoints."""
    plans = toy_plans()
    model_dir = results_root / dataset / f"{trainer}__{plans['plans_name']}"
    save_json(model_dir / "plans.json", plans)
    save_json(model_dir / "dataset.json", {"channel_names": {"0": "US"}, "labels": {"background": 0, "ring": 1,
                                           "core": 2}, "numTraining": 2, "file_ending": ".png"})
    save_json(model_dir / "fingerprint.json", {})
    for fold in folds:
        weights = modules_state_dict(fold_modules(foundation, plans, fold))
        for kind in ("best", "final"):
            save_checkpoint(model_dir / f"fold_{fold}", kind, weights, {"fold": fold})
    return model_dir


class EncodeCounter:
    """Wraps a foundation model's `encode`: counts the images asked for and reuses results for repeated inputs.

    The cache only saves test time; the count is what the predictor requested.
    """

    def __init__(self, foundation: FoundationModel) -> None:
        self.original = foundation.encode
        self.images = 0
        self.calls = 0
        self._cache: dict[bytes, torch.Tensor] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += len(images)
        rows = []
        for image in images:
            key = image.numpy().tobytes()
            if key not in self._cache:
                self._cache[key] = self.original(image[None])
            rows.append(self._cache[key])
        return torch.cat(rows)


class TinyFoundation(FoundationModel):
    """A real FoundationModel (LiteMedSAM's geometry and segment_anything's prompt encoder) with a one-convolution
    encoder and a one-layer decoder, randomly initialised with a fixed seed: the whole pipeline, training included,
    runs in seconds on a CPU with genuine gradients and deterministic (if meaningless) segmentations. The decoder's
    offset makes an untrained model mark part of an image, so label maps compared in tests are not all background."""

    OFFSET = 0.3

    def __init__(self) -> None:
        torch.manual_seed(0)
        network = Sam(image_encoder=torch.nn.Conv2d(3, 256, kernel_size=4, stride=4),
                      prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                                                   input_image_size=(256, 256), mask_in_chans=16),
                      mask_decoder=torch.nn.Identity())
        super().__init__("litemedsam", network, 256, "minmax", torch.device("cpu"))
        self.weight = torch.randn(256) / 16

    def decode(self, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        coarse = torch.einsum("bchw,c->bhw", embeddings + dense, self.weight) + sparse.mean(dim=(1, 2))[:, None, None]
        return F.interpolate(coarse[:, None] + self.OFFSET, size=(256, 256), mode="bilinear", align_corners=False)
