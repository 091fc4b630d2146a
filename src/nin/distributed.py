"""Multi-process training with PyTorch DDP, launched by ``torchrun``; one process needs none of it.

``torchrun --nproc-per-node N -m nin train ...`` sets RANK, LOCAL_RANK and WORLD_SIZE; each process
takes one shard of every epoch and ``batch_size / N`` images of each global batch, so N processes
take the same steps as one process with the same ``batch_size``. Rank 0 alone writes the run folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import NinError


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def init_world(device_name: str) -> World:
    """Join the process group that torchrun describes in the environment (or run alone)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    world = World(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), size)
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return world


def device_for(world: World, device: torch.device) -> torch.device:
    """Each process of a multi-GPU run takes the GPU of its local rank."""
    if world.active and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def local_batch_size(batch_size: int, world: World) -> int:
    if batch_size % world.size:
        raise NinError(f"--batch-size {batch_size} must be divisible by the {world.size} processes")
    return batch_size // world.size


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over all processes (in place); the tensor itself when running alone."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_process(flag: bool, device: torch.device) -> bool:
    """True on every process when it is true on any (so all stop at the same step)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    return bool(all_reduce_sum(torch.tensor([int(flag)], device=device)).item())


def broadcast_from_main(value):
    """Rank 0's value on every process (e.g. a run folder named after rank 0's clock)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def wrap(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    if not world.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def close_world(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()
