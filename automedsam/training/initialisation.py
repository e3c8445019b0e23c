"""Where a prompt module starts: at the box prompt of the training set's mean box.

With PyTorch's default initialisation the module emits near-zero prompt embeddings, for which the frozen
decoder answers "nothing here" with saturated logits (about -25 everywhere for LiteMedSAM): every box loss then
has gradients around 1e-10 and training never leaves the empty mask. Setting the bias of the sparse head to the
prompt encoder's embedding of the mean training box makes the untrained module say "the object is about
there", an unsaturated start from which the weak losses can learn per image (the weights keep their default
random initialisation, so the prompt still depends on the image).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from automedsam.prompt_module import PromptModule

if TYPE_CHECKING:
    from automedsam.foundation.base import FoundationModel


@torch.no_grad()
def start_at_mean_box(
    module: PromptModule, foundation: FoundationModel, boxes_low_res: Sequence[Sequence[Sequence[int]]]
) -> bool:
    """Point the sparse head's bias at the mean box's prompt; False (module untouched) when there is no box."""
    boxes = [box for sample_boxes in boxes_low_res for box in sample_boxes]
    if not boxes:
        return False
    mean_box = torch.tensor(boxes, dtype=torch.float32).mean(dim=0, keepdim=True)
    sparse, _ = foundation.box_prompt(mean_box)  # (1, 2, D): the two corner tokens
    tokens = module.num_points + 1
    padding = foundation.prompt_encoder.not_a_point_embed.weight.expand(max(0, tokens - sparse.shape[1]), -1)
    start = torch.cat([sparse[0], padding.to(sparse.device)], dim=0)[:tokens]
    module.sparse_linear.bias.copy_(start.flatten().to(module.sparse_linear.bias.device))
    return True
