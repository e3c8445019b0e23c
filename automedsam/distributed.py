"""Several processes under torchrun: who this process is, joining the group, its share of the work, waiting.

torchrun sets WORLD_SIZE, RANK, LOCAL_RANK and LOCAL_WORLD_SIZE; a plain `python` launch is a world of one and
touches no process group. Training (DDP, `wrap`), prediction and preprocessing share these helpers: NCCL on CUDA
(one GPU per process), gloo on CPU (the CPU cores split between the processes of a machine). Ranks hand out work by
index, so every rank computes the same list and takes its own slice: no work list is ever sent between processes.
"""
from __future__ import annotations

import importlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from automedsam.device import resolve_device
from automedsam.errors import AutomedsamError
from automedsam.nifti_check import short_reason

Item = TypeVar("Item")

# Ranks wait at a barrier while rank 0 alone fingerprints and plans a dataset; NCCL's default timeout (10 min)
# would abort a large dataset's run there.
GROUP_TIMEOUT = timedelta(hours=2)
PEER_STOPPED = ("Another process of this torchrun launch stopped, so this one stops too: the error that stopped it is "
                "printed by that process.")
_PEER_LEFT = ("closed by peer", "reset by peer", "Broken pipe")  # how gloo and NCCL say a peer went away


@dataclass(frozen=True)
class DistributedContext:
    """This process among the processes of one torchrun launch (a world of one without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    owns_group: bool = False  # True when `setup` created the process group, so `teardown` destroys it

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_environment() -> DistributedContext:
    """Read torchrun's variables; a plain `python` launch is a world of one."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    try:
        rank, world_size, local_rank, local_world_size = (int(os.environ.get(name, default))
                                                          for name, default in zip(names, ("0", "1", "0", "1")))
    except ValueError:
        raise AutomedsamError(f"{', '.join(names)} must be integers (torchrun sets them); unset them to run as a "
                              "single process.") from None
    if not 0 <= rank < world_size or not 0 <= local_rank < local_world_size:
        raise AutomedsamError(f"RANK={rank} / WORLD_SIZE={world_size}, LOCAL_RANK={local_rank} / LOCAL_WORLD_SIZE="
                              f"{local_world_size} are inconsistent; launch with torchrun or unset them.")
    return DistributedContext(rank, world_size, local_rank, local_world_size)


def setup(device_name: str | torch.device | None) -> tuple[DistributedContext, torch.device]:
    """Join the process group when launched by torchrun and pick this process's device.

    CUDA: process LOCAL_RANK uses GPU LOCAL_RANK (NCCL). CPU: gloo. Either way each process of a machine gets its
    share of the cores as torch threads (torchrun would leave every process at one thread).
    """
    context = context_from_environment()
    device = resolve_device(device_name)
    if not context.is_distributed:
        return context, device
    if device.type == "cuda":
        if context.local_rank >= torch.cuda.device_count():
            raise AutomedsamError(f"torchrun started {context.local_world_size} processes on this machine but it has "
                                  f"{torch.cuda.device_count()} GPU(s): use --nproc_per_node "
                                  f"{torch.cuda.device_count()}.")
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    torch.set_num_threads(cpu_threads_per_process(context))  # a GPU process still resizes and combines on the CPU
    if dist.is_initialized():
        return context, device
    _import_dynamo_before_the_group()
    dist.init_process_group(backend=backend, rank=context.rank, world_size=context.world_size, timeout=GROUP_TIMEOUT)
    return DistributedContext(context.rank, context.world_size, context.local_rank, context.local_world_size,
                              owns_group=True), device


def _import_dynamo_before_the_group() -> None:
    """torch._dynamo (DDP's constructor imports it) keeps references to a process group that exists when it is first
    imported, so that group outlived `teardown` and was destroyed during interpreter exit, where gloo can abort the
    process (SIGABRT, 'terminate called without an active exception', after the command's work was done). Imported
    before the group exists, it holds none of it."""
    importlib.import_module("torch._dynamo")


def cpu_threads_per_process(context: DistributedContext) -> int:
    """The cores this process may use, divided among the processes of its machine (at least one each)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // context.local_world_size)


def teardown(context: DistributedContext, *, after_error: bool = False) -> None:
    """Leave the process group `setup` created (one made by the caller is left alone).

    After a normal run every process first waits for the others, so none shuts its connections down while a peer
    may still be finishing its last collective through them (a gloo process was seen aborting at exit once, under
    load). After an error it leaves at once: the other processes may never reach the barrier.
    """
    if context.owns_group and dist.is_initialized():
        try:
            if not after_error:
                barrier(context)
        finally:
            dist.destroy_process_group()


@contextmanager
def joined(device_name: str | torch.device | None) -> Iterator[tuple[DistributedContext, torch.device]]:
    """`setup` for the length of a command, then `teardown`: after the others on success, at once on an error."""
    context, device = setup(device_name)
    try:
        yield context, device
    except BaseException:
        teardown(context, after_error=True)
        raise
    teardown(context)


@contextmanager
def _peers_alive() -> Iterator[None]:
    """A collective fails in the backend when a peer left it (that process stopped on an error of its own, which it
    prints); the backend's long traceback (gloo: 'Connection closed by peer') would bury that error, so this
    process stops with one line pointing at it instead. Any other failure keeps the backend's reason: where the
    backend itself failed (NCCL's network at the first barrier), every process stops alike and no other prints it."""
    try:
        yield
    except RuntimeError as error:  # NCCL raises DistBackendError, one of them; gloo a plain RuntimeError
        if any(sign in str(error) for sign in _PEER_LEFT):
            raise AutomedsamError(PEER_STOPPED) from error
        raise AutomedsamError(f"{PEER_STOPPED} The backend said: {short_reason(error)} (when every process stops "
                              "with this message, that is the error to fix).") from error


def shard(items: Sequence[Item], context: DistributedContext) -> list[Item]:
    """This rank's share of a list every rank holds in the same order: items i with i % world_size == rank."""
    return list(items[context.rank::context.world_size])


def all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum a tensor over processes, in place (a no-op on one process)."""
    if context.is_distributed:
        with _peers_alive():
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def same_on_every_rank(value: Any, context: DistributedContext) -> bool:
    """Whether every process holds an equal `value` (a picklable list of names, say); True on one process."""
    if not context.is_distributed:
        return True
    gathered: list[Any] = [None] * context.world_size
    with _peers_alive():
        dist.all_gather_object(gathered, value)
    return all(other == gathered[0] for other in gathered)


def sum_counts(counts: Sequence[int], context: DistributedContext, device: torch.device) -> list[int]:
    """Per-rank counts summed over all ranks (each rank gets the totals); `device` must suit the backend."""
    if not context.is_distributed:
        return list(counts)
    totals = torch.tensor(list(counts), dtype=torch.int64, device=device)
    return [int(value) for value in all_reduce_sum(totals, context).cpu()]


def wrap(module: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """DDP-wrap a module when distributed (gradients are averaged across processes), else return it."""
    if not context.is_distributed:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def barrier(context: DistributedContext) -> None:
    """Wait until every process arrives (a no-op on one process)."""
    if context.is_distributed:
        with _peers_alive():
            dist.barrier()
