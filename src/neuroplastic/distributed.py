"""Data-parallel helpers over ``torch.distributed`` (processes started by ``torchrun`` or
``accelerate launch``); every function is a no-op in a single process.

Rank 0 writes; every rank computes. A process group is set up from the launcher's environment
variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...) by :func:`init_from_environment`:
NCCL for CUDA devices, gloo otherwise.

Rank 0 alone reads and writes the run directory; what the other ranks need from it (decisions,
weights, trainer state) reaches them through :func:`on_main` and :func:`broadcast_parameters`,
so several machines need no shared file system.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from neuroplastic.errors import NeuroplasticError

T = TypeVar("T")
P = ParamSpec("P")


class MainFailed(NeuroplasticError):
    """Raised on the other ranks when rank 0 failed in :func:`on_main` (rank 0 says why)."""


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


#: Whether rank 0 is inside :func:`on_main`: a call within it hands nothing to the other ranks
#: (they wait for the outer call's result only).
_in_main = False


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 alone (reading or writing the run directory), its result handed to
    every rank; if it raises, rank 0 raises that error and the others :class:`MainFailed`, so
    no rank waits forever for a rank that has stopped. In a single process: just ``fn()``.
    Called within another ``on_main`` (on rank 0): just ``fn()``, the outer call broadcasts."""
    global _in_main
    if not active() or (_in_main and is_main()):
        return fn()
    if is_main():
        _in_main = True
        try:
            value = fn()
        except BaseException as error:
            broadcast_object(("error", f"rank 0 stopped: {type(error).__name__}: {error}"))
            raise
        finally:
            _in_main = False
        return broadcast_object(("ok", value))[1]
    kind, value = broadcast_object(None)
    if kind == "error":
        raise MainFailed(value)
    return value


def rank_zero(fn: Callable[P, T]) -> Callable[P, T]:
    """``fn`` made to run on rank 0 alone whenever it is called, its result handed to every
    rank (:func:`on_main`): for the run's reads and writes, called on every rank as one line."""

    @functools.wraps(fn)
    def on_rank_zero(*args: P.args, **kwargs: P.kwargs) -> T:
        return on_main(functools.partial(fn, *args, **kwargs))

    return on_rank_zero


class OnMain:
    """``target`` (a run directory or its store) with every method call made on rank 0 alone
    and its result handed to every rank: ``OnMain(store).done(arm, stage)`` on every rank."""

    def __init__(self, target: object) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return rank_zero(getattr(self._target, name))


def broadcast_parameters(module: nn.Module) -> None:
    """Rank 0's parameter values into every rank's ``module`` (after rank 0 loaded weights)."""
    if not active():
        return
    with torch.no_grad():
        for parameter in module.parameters():
            # A contiguous copy: some parameters are views of one storage (GPT-2's q/k/v).
            buffer = parameter.detach().clone(memory_format=torch.contiguous_format)
            dist.broadcast(buffer, src=0)
            parameter.copy_(buffer)


def my_share(items: Sequence[T]) -> list[T]:
    """This rank's part of one global batch: rank r of W takes items r, r+W, r+2W, ..."""
    return list(items[rank() :: world_size()])


def mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a (detached) tensor; ``tensor`` itself in a single process."""
    if not active():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world_size()


def replicate(module: nn.Module, device: str) -> nn.Module:
    """``module`` wrapped for data-parallel training (its gradients averaged over ranks at every
    backward), or ``module`` itself in a single process. Parameters the forward skips (a bridge's
    unembedding when the head reads an earlier hook point) are allowed."""
    if not active():
        return module
    ddp = nn.parallel.DistributedDataParallel
    # No buffer changes in training (no batch norm here): none to sync at every forward. The
    # flag's name changed in torch 2.13.
    sync = "forward_sync_buffers"
    if sync not in inspect.signature(ddp.__init__).parameters:
        sync = "broadcast_buffers"
    cuda = device.startswith("cuda")
    return ddp(
        module,
        device_ids=[torch.device(device).index] if cuda else None,
        find_unused_parameters=True,
        **{sync: False},
    )


def finish() -> None:
    """Leave the process group (at the end of a launched command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
