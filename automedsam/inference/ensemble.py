"""Every prompt module of a model (each fold x each target) run as one batched module.

Ensembling five folds of three targets means fifteen prompt modules per image. Called one by one they are fifteen
small calls (on a CPU each pays its threads' start-up, on a GPU each is a short launch); torch.func stacks their
weights and vmap runs them in one call with the same arithmetic, grouped. The modules share one architecture
(`build_prompt_module(plans)`), which stacking needs.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


class PromptEnsemble:
    """Runs `modules` on the same image embeddings at once; outputs are module-major: (module, image) pairs."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        if not modules:
            raise ValueError("a PromptEnsemble needs at least one prompt module")
        self.count = len(modules)
        self.parameters, self.buffers = stack_module_state(list(modules))
        template = copy.deepcopy(modules[0]).to("meta")

        def run_one(parameters: dict, buffers: dict, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return functional_call(template, (parameters, buffers), (embeddings,))

        self._run_all = vmap(run_one, in_dims=(0, 0, None))

    @torch.no_grad()
    def __call__(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, 256, 64, 64) -> sparse (count * K, T, 256) and dense (count * K, 256, 64, 64).

        Row m * K + k holds module m's prompt for image k.
        """
        sparse, dense = self._run_all(self.parameters, self.buffers, embeddings)
        return sparse.flatten(0, 1), dense.flatten(0, 1)
