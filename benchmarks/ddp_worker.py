"""One TeCoA training run for the DDP figure; run directly (1 process) or under torchrun.

python benchmarks/ddp_worker.py OUT.json --steps 10 --batch-size 32
Rank 0 writes per-step wall and CPU seconds (end of step to end of next step) to OUT.json."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--find-unused",
        choices=("auto", "true"),
        default="auto",
        help="auto: the Trainer decides after step 1; true: DDP searches every step",
    )
    args = p.parse_args()

    from benchmarks.common import CIFAR10, setup_env, small_c10

    setup_env()
    import torch

    from benchmarks.bench_training import InMemory
    from clip_robust_ext.registry import get
    from clip_robust_ext.training import TrainConfig, train
    from clip_robust_ext.training.distributed import cleanup_distributed, current

    g = torch.Generator().manual_seed(0)
    n = args.batch_size * args.steps
    data = InMemory(torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % 10, CIFAR10)
    walls: list[float] = []
    cpus: list[float] = []
    last: dict[str, float] = {}

    def stamp(loaded, step) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        if last:
            walls.append(wall - last["wall"])
            cpus.append(cpu - last["cpu"])
        last.update(wall=wall, cpu=cpu)

    config = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, eval_every=1, seed=0)
    run_dir = Path(args.out).with_suffix(".run")  # inside the caller's temporary folder
    defense = get("defenses", "tecoa").obj()
    if args.find_unused == "true":
        defense.find_unused_parameters = True
    train(
        small_c10(),
        defense,
        data,
        config,
        run_dir,
        eval_fn=stamp,
        progress=False,
    )
    info = current()
    if info.is_main:
        Path(args.out).write_text(
            json.dumps({"world_size": info.world_size, "step_wall": walls, "step_cpu": cpus})
        )
    cleanup_distributed()


if __name__ == "__main__":
    main()
