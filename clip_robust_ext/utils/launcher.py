"""Which launcher started this process, and the torch.distributed environment it implies.

torchrun, `accelerate launch` and submitit's TorchDistributedEnvironment set RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT, which `init_process_group("env://")` reads. Plain `srun`
sets only SLURM's own variables (SLURM_PROCID, SLURM_STEP_NUM_TASKS or SLURM_NTASKS,
SLURM_LOCALID); `export_env` translates them, so one code path serves every launcher. The
rendezvous address is MASTER_ADDR / MASTER_PORT when set, else the step's first node and a port
derived from the job id (every task of a step computes the same one)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import ClipxUsageError


@dataclass(frozen=True)
class Launch:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "single"  # "torchrun" (any env:// launcher), "slurm" or "single"


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ClipxUsageError(f"environment variable {name}={value!r} is not an integer") from None


def detect(environ: dict[str, str] | None = None) -> Launch:
    """The launch this process is part of: env:// variables first (torchrun, accelerate, submitit
    helpers, `srun torchrun`), then an `srun` step of several tasks, else a single process."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env:
        world = _int("WORLD_SIZE", env["WORLD_SIZE"])
        if world > 1:
            rank = _int("RANK", env.get("RANK", "0"))
            local = _int("LOCAL_RANK", env.get("LOCAL_RANK", "0"))
            return _checked(Launch(rank, world, local, "torchrun"), "RANK", "WORLD_SIZE")
        return Launch()
    tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
    if tasks is not None and "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        world = _int("SLURM_NTASKS", tasks)
        if world > 1:
            rank = _int("SLURM_PROCID", env["SLURM_PROCID"])
            local = _int("SLURM_LOCALID", env.get("SLURM_LOCALID", "0"))
            return _checked(Launch(rank, world, local, "slurm"), "SLURM_PROCID", "SLURM_NTASKS")
    return Launch()


def _checked(launch: Launch, rank_var: str, world_var: str) -> Launch:
    if not 0 <= launch.rank < launch.world_size:
        raise ClipxUsageError(
            f"{rank_var}={launch.rank} is outside 0..{launch.world_size - 1} ({world_var})"
        )
    return launch


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[07-09,12],cpu1' -> 'gpu07'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ClipxUsageError(f"cannot read the SLURM node list {nodelist!r}; set MASTER_ADDR")
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    return prefix + re.split(r"[-,]", ranges)[0]


def export_env(launch: Launch, environ: dict[str, str] | None = None) -> None:
    """Set the env:// variables a SLURM launch lacks (existing values are kept)."""
    env = os.environ if environ is None else environ
    if launch.source != "slurm":
        return
    if "MASTER_ADDR" not in env:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
        env["MASTER_ADDR"] = first_host(nodes) if nodes else "127.0.0.1"
    if "MASTER_PORT" not in env:
        job = _int("SLURM_JOB_ID", env.get("SLURM_JOB_ID", "0"))
        env["MASTER_PORT"] = str(20000 + job % 20000)
    env.setdefault("RANK", str(launch.rank))
    env.setdefault("WORLD_SIZE", str(launch.world_size))
    env.setdefault("LOCAL_RANK", str(launch.local_rank))
