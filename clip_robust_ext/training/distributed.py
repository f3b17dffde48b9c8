"""torchrun support: process group, exact seeded data order, and small collectives.

Data order: the global order of epoch e is a permutation drawn from (seed, epoch) only, cut into
global batches of `batch_size`; rank r takes the r-th contiguous slice of each global batch. So
N processes see exactly the samples one process sees per step, and resuming at (epoch, step)
replays the same order with no state beyond those two numbers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..errors import ClipxUsageError
from ..utils.launcher import detect, export_env


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the launcher's process group when it started several processes (gloo on CPU, nccl on GPU)."""
    launch = detect()  # torchrun, accelerate, submitit or srun (utils/launcher.py)
    if launch.world_size <= 1:
        return DistInfo()
    if not dist.is_available():
        raise ClipxUsageError(
            f"{launch.world_size} processes ({launch.source}) but this torch build has no "
            "torch.distributed"
        )
    local_rank = launch.local_rank
    if not dist.is_initialized():
        export_env(launch)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())


def current() -> DistInfo:
    """The process group this process is in (single process when none)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return DistInfo(
            dist.get_rank(),
            dist.get_world_size(),
            int(os.environ.get("LOCAL_RANK", "0")),
            dist.get_backend(),
        )
    return DistInfo()


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (identity in one process)."""
    if not current().enabled:
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Elementwise max over ranks (identity in one process)."""
    if not current().enabled:
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` from all ranks along dim 0, gradients flowing back to each rank's part.

    For contrastive losses over the global batch (open_clip's gather_with_grad): each rank computes
    the full loss; the all_gather backward sums the gradient over ranks and DDP averages, which
    yields exactly the single-process gradient."""
    if not current().enabled:
        return t
    import torch.distributed.nn.functional as dist_nn

    return torch.cat(dist_nn.all_gather(t.contiguous()), dim=0)


def gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` from all ranks along dim 0, no gradient (labels, indices)."""
    if not current().enabled:
        return t
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out, dim=0)


def gather_objects(obj):
    """List of `obj` from every rank (a one-element list in one process)."""
    if not current().enabled:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The global sample order of one epoch: a function of (seed, epoch) only."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7_919 + 12_345) % 2**63)
    return torch.randperm(n, generator=g)


class ShardedBatchSampler(Sampler[list[int]]):
    """Global batches of `batch_size` from epoch_order(seed, epoch), dropping the last partial
    batch; yields this rank's contiguous slice of each, starting at global batch `start_step`."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        epoch: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size % world_size:
            raise ClipxUsageError(
                f"batch_size {batch_size} (global) must be divisible by the number of processes {world_size}"
            )
        if n < batch_size:
            raise ClipxUsageError(
                f"the dataset has {n} samples, fewer than one batch of {batch_size}"
            )
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self.local = batch_size // world_size

    @staticmethod
    def steps_per_epoch(n: int, batch_size: int) -> int:
        return n // batch_size

    def __len__(self) -> int:
        return max(0, self.steps_per_epoch(self.n, self.batch_size) - self.start_step)

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_order(self.n, self.seed, self.epoch)
        for step in range(self.start_step, self.steps_per_epoch(self.n, self.batch_size)):
            begin = step * self.batch_size + self.rank * self.local
            yield order[begin : begin + self.local].tolist()
