"""One training epoch: every target's prompt module on the same batches, one optimiser step per batch.

All targets share the image embeddings, so one pass over the data trains every module: the per-target
losses are summed and backpropagated together through the frozen decoder into the modules only.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, ContextManager, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from automedsam.device import autocast_dtype, native_bf16
from automedsam.distributed import DistributedContext, all_reduce_sum
from automedsam.errors import AutomedsamError
from automedsam.losses import WeakBoxLoss

if TYPE_CHECKING:
    from automedsam.foundation.base import FoundationModel
    from automedsam.training.data import SampleSet


@dataclass
class EpochLoss:
    """Mean loss per sample over the epoch (all processes), and its unweighted terms summed over targets."""

    total: float
    terms: dict[str, float]


TRAINING_PRECISIONS = ("auto", "fp32", "bf16")


def training_autocast(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype the prompt modules and the decoder train under; None: full precision (the losses are fp32 always).

    `auto`: bf16 on CUDA (fp16 with a gradient scaler where bf16 is unsupported) and on a CPU that computes bf16 in
    hardware (`device.native_bf16`: there it trains about 1.4-1.7x faster with the ensembles' Dice unchanged,
    documentation/benchmarks.md), fp32 on other CPUs, where bf16 is emulated and slower. `fp32` and `bf16` force a
    precision.
    """
    if precision not in TRAINING_PRECISIONS:
        raise AutomedsamError(f"Unknown training precision '{precision}'; use {', '.join(TRAINING_PRECISIONS)}.")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda" and not native_bf16(device)):
        return None
    return autocast_dtype(device, "bf16")


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


def process_batch_size(batch_size: int, num_samples: int, context: DistributedContext) -> int:
    """Each process's share of the planned batch, which stays the global batch under DDP (the processes' gradients
    are averaged, so equal shares train as one process would, the outside-box BCE aside: it is averaged over each
    process's own outside pixels): a process count that does not divide the batch evenly, or leaves a process
    without a training sample, is refused with the counts that work."""
    workable = [count for count in range(1, batch_size + 1)
                if batch_size % count == 0 and count <= max(num_samples, 1)]
    if context.world_size not in workable:
        raise AutomedsamError(
            f"Training splits the planned batch of {batch_size} sample(s) evenly over the processes, and the fold "
            f"trains on {num_samples} sample(s): it runs on {', '.join(map(str, workable))} process(es), not "
            f"{context.world_size}. Launch torchrun with that many processes in all (--nproc_per_node x --nnodes).")
    return batch_size // context.world_size


def epoch_order(num_samples: int, epoch: int, seed: int, context: DistributedContext, *, batch_size: int) -> list[int]:
    """This process's sample indices for `epoch`, in the order it trains them in batches of its share of
    `batch_size` (`process_batch_size`).

    The shuffle is a function of (seed, epoch) only, so a resumed run sees exactly the order an uninterrupted one
    would; it is the permutation torch's DistributedSampler draws, so a run stopped under an earlier version resumes
    in its order. Under DDP every global batch of `batch_size` consecutive samples is split into equal shares, one
    per process in rank order; the last samples of the shuffle that cannot give each process one (fewer than the
    process count) wait for another epoch's shuffle, so no sample is trained twice in an epoch and every process
    takes the same number of steps.
    """
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    shuffled = torch.randperm(num_samples, generator=generator).tolist()
    kept = shuffled[: num_samples - num_samples % context.world_size]
    order: list[int] = []
    for start in range(0, len(kept), batch_size):
        global_batch = kept[start : start + batch_size]
        share = len(global_batch) // context.world_size
        order += global_batch[context.rank * share : (context.rank + 1) * share]
    return order


def epoch_versions(versions: Sequence[Sequence[int]], order: Sequence[int], epoch: int, seed: int) -> list[int]:
    """The rows `order`'s samples train on in `epoch`: each sample or one of its views, drawn uniformly.

    The draw is a function of (seed, epoch) only, like the order, so a resumed run draws what an uninterrupted one
    would and every process agrees on a sample's version; a sample without views is always itself.
    """
    rng = np.random.default_rng([seed, epoch])
    drawn = [rows[int(rng.integers(len(rows)))] for rows in versions]
    return [drawn[index] for index in order]


def train_epoch(
    modules: dict[int, nn.Module],
    foundation: FoundationModel,
    loss_fns: Mapping[int, WeakBoxLoss],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    data: SampleSet,
    order: Sequence[int],
    batch_size: int,
    context: DistributedContext,
    device: torch.device,
    *,
    autocast: torch.dtype | None = None,
) -> EpochLoss:
    """Run one pass over `order` in batches under `autocast` (None: full precision); the epoch's mean losses."""
    names = sorted({name for loss_fn in loss_fns.values() for name in loss_fn.weights})
    sums = torch.zeros(2 + len(names), dtype=torch.float64)
    for start in range(0, len(order), batch_size):
        indices = list(order[start : start + batch_size])
        embeddings = data.embedding_batch(indices, device)
        loss, terms = _batch_loss(modules, foundation, loss_fns, data, indices, embeddings, device, autocast)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        sums[0] += float(loss.detach()) * len(indices)
        sums[1] += len(indices)
        for position, name in enumerate(names):
            sums[2 + position] += terms.get(name, 0.0) * len(indices)
    # reduced on the device only across processes (NCCL needs it there; MPS holds no float64)
    reduced = all_reduce_sum(sums.to(device), context).cpu() if context.is_distributed else sums
    count = max(float(reduced[1]), 1.0)
    return EpochLoss(float(reduced[0]) / count, {name: float(reduced[2 + i]) / count for i, name in enumerate(names)})


def _batch_loss(
    modules: dict[int, nn.Module],
    foundation: FoundationModel,
    loss_fns: Mapping[int, WeakBoxLoss],
    data: SampleSet,
    indices: list[int],
    embeddings: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over targets of each target's loss; terms are summed over targets too."""
    total = torch.zeros((), device=device)
    terms: dict[str, float] = {}
    with autocast_context(device, dtype):
        logits = decode_targets(modules, foundation, embeddings)
    for label, target_logits in logits.items():
        labels = data.targets[label]
        masks = None if labels.masks_low_res is None else labels.masks_low_res[indices].to(device)
        pseudo = None if labels.pseudo_low_res is None else labels.pseudo_low_res[indices].to(device)
        loss, loss_terms = loss_fns[label](target_logits.float(), [labels.boxes_low_res[i] for i in indices],
                                           masks=masks, pseudo=pseudo)
        total = total + loss
        for name, value in loss_terms.items():
            terms[name] = terms.get(name, 0.0) + value
    return total, terms


def decode_targets(
    modules: Mapping[int, nn.Module], foundation: FoundationModel, embeddings: torch.Tensor
) -> dict[int, torch.Tensor]:
    """Per target, the (B, 1, L, L) logits of its module's prompts on `embeddings`, from one decoder call.

    Every target's module prompts the same B embeddings, so the T x B prompts go to the decoder together
    (target-major rows, each image's embedding repeated once per target), which then runs them in the passes that
    are fastest on its device (`FoundationModel.decoder_rows`) whatever the number of targets and images.
    """
    prompts = [module(embeddings) for module in modules.values()]
    sparse = torch.cat([prompt[0] for prompt in prompts])
    dense = torch.cat([prompt[1] for prompt in prompts])
    logits = foundation.decode(embeddings.repeat(len(prompts), 1, 1, 1), sparse, dense)
    return dict(zip(modules, logits.split(len(embeddings))))
