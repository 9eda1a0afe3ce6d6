"""torchrun / DDP plumbing: process-group setup, rank info, small collective helpers.

Under ``torchrun --nproc_per_node N`` (or ``python -m torch.distributed.run``) the environment has
RANK / WORLD_SIZE / LOCAL_RANK; ``lumi train`` then joins a process group (NCCL on CUDA, gloo on
CPU), wraps the model in DDP, and only rank 0 writes files. Without those variables everything is
a plain single process and these helpers are no-ops.
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
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_pref: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (idempotent); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )
    if not dist.is_initialized():
        use_cuda = device_pref.startswith("cuda") or (device_pref == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(info: DistInfo, obj: Any) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_(info: DistInfo, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t


def teardown_distributed(info: DistInfo, clean: bool = True) -> None:
    """Leave the process group (exiting with it alive aborts the process). ``clean=False`` after an
    error skips the barrier, so a failing rank never waits for ranks that are still training."""
    if info.enabled and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
