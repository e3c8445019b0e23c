"""DistributedDataParallel for the trainer: the same code trains on one process or on several under torchrun.

Each process joins the group through `automedsam.distributed` (NCCL on CUDA, gloo on CPU), wraps its prompt modules
in DistributedDataParallel, trains on its shard of every epoch, and only rank 0 writes files. The process-group
helpers are imported here so the trainer reaches everything distributed through this one module.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from automedsam.distributed import (DistributedContext, all_reduce_sum, barrier, context_from_environment, setup,
                                    teardown)

__all__ = ["DistributedContext", "all_reduce_sum", "barrier", "context_from_environment", "setup", "teardown", "wrap"]


def wrap(module: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """DDP-wrap a module when distributed (gradients are averaged across processes), else return it."""
    if not context.is_distributed:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)

