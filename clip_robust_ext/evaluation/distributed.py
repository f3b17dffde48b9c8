"""Multi-process evaluation (torchrun, srun, accelerate, submitit): whole batches are sharded across ranks, per-sample results are gathered.

Seeds depend on the global batch index only, so a batch gives the same result on any rank and
the gathered result equals a single-process run. Single process: every helper is a no-op."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from ..utils.launcher import detect, export_env


def maybe_init() -> tuple[int, int]:
    """(rank, world_size); joins the launcher's group (gloo on CPU, nccl on GPU) if not joined."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    launch = detect()  # torchrun, accelerate, submitit or srun (utils/launcher.py)
    if launch.world_size <= 1 or not dist.is_available():
        return 0, 1
    export_env(launch)
    backend = (
        "nccl"
        if torch.cuda.is_available() and os.environ.get("CLIPX_DIST_BACKEND") != "gloo"
        else "gloo"
    )
    dist.init_process_group(backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(launch.local_rank)
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


def on_main(fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 only; every rank returns its result, or raises its error, so no rank is
    left waiting in a collective that rank 0 never reaches (one lock holder, one writer)."""
    rank, size = world()
    if size == 1:
        return fn()
    outcome: tuple[bool, Any] | None = None
    error: BaseException | None = None
    if rank == 0:
        try:
            outcome = (True, fn())
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            error, outcome = exc, (False, exc)
    ok, value = broadcast(outcome)
    if ok:
        return value
    raise error if error is not None else value


@contextlib.contextmanager
def held_by_main(lock: contextlib.AbstractContextManager) -> Iterator[None]:
    """Rank 0 holds `lock` (e.g. the run-directory lock) around the block; the other ranks
    proceed only once it is held, and fail with rank 0's error when it cannot be taken."""
    if world()[0] != 0:
        on_main(lambda: None)
        yield
        return
    with contextlib.ExitStack() as stack:
        on_main(lambda: stack.enter_context(lock) and None)
        yield


def finish() -> None:
    """Leave the process group (after the last collective), so the launcher sees a clean exit."""
    if dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()
