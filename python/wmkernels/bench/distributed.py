"""Scale-out under `torchrun`: which rank this is, which windows it takes, and gathering results on rank 0.

Launched plainly, the benchmark is one process (rank 0 of 1) and nothing here touches torch.distributed.
Under `torchrun --nproc_per_node=N -m wmkernels.bench ...` (WORLD_SIZE > 1 in the environment) each rank
joins a process group (gloo on CPU, NCCL on CUDA), takes every N-th window, and rank 0 gathers the per-rank
results and writes the report.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: str) -> DistInfo:
    """Join the process group torchrun describes in the environment; a no-op for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)  # NCCL's object collectives use the current device
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def rank_device(device: str, info: DistInfo) -> str:
    """`cuda` becomes this rank's GPU (`cuda:<local_rank>`) when several ranks share a node."""
    if info.world_size > 1 and device == "cuda":
        return f"cuda:{info.local_rank}"
    return device


def shard(items: list, info: DistInfo) -> list:
    """Every world_size-th item, starting at this rank (round robin keeps shards within one of each other)."""
    return items[info.rank::info.world_size]


def gather_to_main(obj: Any, info: DistInfo) -> list | None:
    """All ranks' `obj` (picklable) in rank order on rank 0; None on the other ranks."""
    if info.world_size == 1:
        return [obj]
    out = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
