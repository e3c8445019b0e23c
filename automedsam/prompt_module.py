"""The learnable prompt module: predicts MedSAM's prompt embeddings from its image embedding.

Written from the description in Gaillochet et al. (MICCAI-MedAGI 2024): a shared 1x1 convolution to C centre
channels feeds a dense branch (the dense prompt embedding, same size as the image embedding) and a sparse branch
(P point tokens plus the one extra token SAM's prompt encoder adds as padding/box slot). The frozen decoder
consumes both, so the module stands in for a user's prompt.
"""
from __future__ import annotations

from typing import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from automedsam.errors import AutomedsamError

SPARSE_POOL_SIZE = 8
# How weights get back the plans they were made with: a fold folder keeps no copy of them, nor its checkpoint's .json
PLANS_RESTORE = ("put back the model folder's plans.json as training or install wrote it (automedsam_train copies "
                 "preprocessed/DatasetXXX_Name/plans.json, still the same file unless the dataset was planned again "
                 "since; automedsam_install_model takes it from the model zip)")


class PromptModule(nn.Module):
    """Image embedding (B, D, S, S) -> (sparse (B, P+1, D), dense (B, D, S, S)) prompt embeddings."""

    def __init__(self, embed_dim: int = 256, center_channels: int = 128, num_points: int = 1,
                 embedding_size: int = 64) -> None:
        super().__init__()
        _require(isinstance(embed_dim, int) and embed_dim >= 1, f"embed_dim must be an integer >= 1, got {embed_dim!r}")
        _require(isinstance(center_channels, int) and center_channels >= 2 and center_channels % 2 == 0,
                 f"center_channels must be an even integer >= 2 (the sparse branch halves it), got {center_channels!r}")
        _require(isinstance(num_points, int) and num_points >= 0,
                 f"num_points must be an integer >= 0, got {num_points!r}")
        _require(isinstance(embedding_size, int) and embedding_size >= SPARSE_POOL_SIZE
                 and embedding_size % SPARSE_POOL_SIZE == 0,
                 f"embedding_size must be a multiple of {SPARSE_POOL_SIZE}, got {embedding_size!r}")
        self.embed_dim = embed_dim
        self.center_channels = center_channels
        self.num_points = num_points
        self.embedding_size = embedding_size
        pooled_cells = (embedding_size // SPARSE_POOL_SIZE) ** 2
        self.center_conv = nn.Conv2d(embed_dim, center_channels, kernel_size=1)
        self.dense_conv = nn.Conv2d(center_channels, embed_dim, kernel_size=3, padding=1)
        self.sparse_conv = nn.Conv2d(center_channels, center_channels // 2, kernel_size=1)
        self.sparse_linear = nn.Linear(center_channels // 2 * pooled_cells, (num_points + 1) * embed_dim)

    def forward(self, image_embedding: Tensor) -> tuple[Tensor, Tensor]:
        expected = (self.embed_dim, self.embedding_size, self.embedding_size)
        if image_embedding.ndim != 4 or tuple(image_embedding.shape[1:]) != expected:
            raise ValueError(f"PromptModule expects image embeddings of shape (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(image_embedding.shape)}")
        center = F.relu(self.center_conv(image_embedding))
        dense = F.relu(self.dense_conv(center))
        pooled = F.max_pool2d(F.relu(self.sparse_conv(center)), kernel_size=SPARSE_POOL_SIZE)
        sparse = self.sparse_linear(pooled.flatten(start_dim=1))
        return sparse.view(-1, self.num_points + 1, self.embed_dim), dense


def build_prompt_module(plans: Mapping) -> PromptModule:
    """The module sized by plans.json's `prompt_module` section (`center_channels`, `num_points`)."""
    section = plans.get("prompt_module")
    if not isinstance(section, Mapping) or not {"center_channels", "num_points"} <= section.keys():
        raise AutomedsamError(
            "plans.json needs a 'prompt_module' section with 'center_channels' and 'num_points'; "
            "re-run automedsam_plan_and_preprocess to regenerate the plans.")
    try:
        return PromptModule(center_channels=section["center_channels"], num_points=section["num_points"])
    except ValueError as error:
        raise AutomedsamError(
            f"plans.json prompt_module: {error}. Fix the value or re-run automedsam_plan_and_preprocess.") from None


def modules_state_dict(modules: Mapping[int, PromptModule]) -> dict[str, Tensor]:
    """One flat CPU state dict "<label>.<param name>" for all targets' modules (a snapshot, not a live view)."""
    state: dict[str, Tensor] = {}
    for label, module in modules.items():
        if isinstance(label, bool) or not isinstance(label, int):
            raise ValueError(f"prompt modules are keyed by integer label, got {label!r}")
        for name, tensor in module.state_dict().items():
            state[f"{label}.{name}"] = tensor.detach().cpu().clone()
    return state


def load_modules(state: Mapping[str, Tensor], plans: Mapping, where: str = "checkpoint", *,
                 mismatch_advice: str = f"To use this checkpoint, {PLANS_RESTORE}; or retrain with the current plans."
                 ) -> dict[int, PromptModule]:
    """Rebuild every label's module from a flat state dict; strict: any missing, extra or misshaped tensor fails.

    `where` names the source (e.g. the checkpoint path) in the error message; `mismatch_advice` says what to do
    about weights that do not fit the plans, where the caller knows better (install: the zip is to be exported again).
    """
    per_label: dict[int, dict[str, Tensor]] = {}
    for key, tensor in state.items():
        prefix, _, name = key.partition(".")
        if not prefix.isdigit() or not name:
            raise AutomedsamError(f"{where}: key '{key}' is not '<label>.<param name>'; "
                                  "this file was not written by automedsam_train.")
        per_label.setdefault(int(prefix), {})[name] = tensor
    if not per_label:
        raise AutomedsamError(f"{where} holds no prompt module weights; retrain or pick another checkpoint.")
    modules = {}
    for label in sorted(per_label):
        module = build_prompt_module(plans)
        problems = _state_mismatches(module.state_dict(), per_label[label])
        if problems:
            raise AutomedsamError(
                f"{where}: the prompt module of label {label} does not match plans.json "
                f"(prompt_module {dict(plans['prompt_module'])}): {'; '.join(problems)}. {mismatch_advice}")
        module.load_state_dict(per_label[label], strict=True)
        modules[label] = module
    return modules


def _state_mismatches(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> list[str]:
    """Readable differences between the tensors a module needs and those a file holds."""
    problems = []
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected)}")
    for name in sorted(expected.keys() & given.keys()):
        if tuple(expected[name].shape) != tuple(given[name].shape):
            problems.append(f"{name} has shape {tuple(given[name].shape)}, expected {tuple(expected[name].shape)}")
    return problems


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
