"""torchrun support: whole batches are sharded across ranks, per-sample results are gathered.

Seeds depend on the global batch index only, so a batch gives the same result on any rank and
the gathered result equals a single-process run. Single process: every helper is a no-op."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def maybe_init() -> tuple[int, int]:
    """(rank, world_size); joins the torchrun group (gloo on CPU, nccl on GPU) if not joined."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return 0, 1
    backend = (
        "nccl"
        if torch.cuda.is_available() and os.environ.get("CLIPX_DIST_BACKEND") != "gloo"
        else "gloo"
    )
    dist.init_process_group(backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(items: list[Any], rank: int, world_size: int) -> list[Any]:
    """Round-robin over whole items (batches): rank r takes items r, r + W, r + 2W ..."""
    return items[rank::world_size]


def all_gather(obj: Any) -> list[Any]:
    """Every rank's object, in rank order (a one-element list in a single process)."""
    rank, size = world()
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s object on every rank."""
    _, size = world()
    if size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()
