"""Data-parallel helpers over ``torch.distributed`` (processes started by ``torchrun`` or
``accelerate launch``); every function is a no-op in a single process.

Rank 0 writes; every rank computes. A process group is set up from the launcher's environment
variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...) by :func:`init_from_environment`:
NCCL for CUDA devices, gloo otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def launched() -> bool:
    """True in a process started by a launcher for more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device: str) -> str:
    """Join the launcher's process group (once) and return this process's device: with CUDA,
    ``cuda:LOCAL_RANK`` (one GPU per process), else ``device`` unchanged."""
    if not launched():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def shard_batches(items: Sequence[T], batch_size: int) -> list[T]:
    """This rank's share of ``items``, cut on batch boundaries: rank r of W takes batches
    r, r+W, r+2W, ... so every batch is the one a single process would have made."""
    if not active():
        return list(items)
    n_batches = (len(items) + batch_size - 1) // batch_size
    return [
        item
        for batch in range(rank(), n_batches, world_size())
        for item in items[batch * batch_size : (batch + 1) * batch_size]
    ]


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over ranks (in place)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_cat(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """Every rank's ``tensor`` (same shape on each), concatenated along ``dim`` in rank order."""
    if not active():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=dim)


def broadcast_object(value: T) -> T:
    """Rank 0's ``value`` on every rank."""
    if not active():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
