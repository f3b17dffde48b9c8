"""A small training run in its own process, for the kill -9 / resume and torchrun tests.

python tests/train_worker.py RUN_DIR [--defense tecoa] [--steps 12] ...   (also under torchrun)
--sleep S pauses S seconds after each step (through eval_fn, which runs outside the training RNG
streams), so a test can SIGKILL the process mid-run without changing what it computes."""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--defense", default="tecoa")
    p.add_argument("--params", default="", help="k=v,k=v defense parameters (ints parsed)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--checkpoint-every", type=int, default=2)
    p.add_argument("--amp", default="off")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--scope", default="full", help="TrainConfig.scope (full, lora, first-blocks)")
    args = p.parse_args()
    torch.set_num_threads(1)

    from clip_robust_ext.data import ProceduralShapes
    from clip_robust_ext.models import load_clip
    from clip_robust_ext.registry import get
    from clip_robust_ext.training import TrainConfig, train
    from clip_robust_ext.training.distributed import cleanup_distributed

    params = {}
    for item in filter(None, args.params.split(",")):
        key, value = item.split("=")
        params[key] = (
            int(value) if value.isdigit() else {"true": True, "false": False}.get(value, value)
        )
    torch.manual_seed(0)
    loaded = load_clip("clipx-tiny")
    dataset = ProceduralShapes("train", n=args.samples, seed=3)
    config = TrainConfig(
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        warmup_steps=2,
        checkpoint_every=args.checkpoint_every,
        eval_every=1 if args.sleep else 0,
        amp=args.amp,
        seed=5,
        trainable="both",
        scope=args.scope,
        lora_rank=4,
    )

    def pause(loaded, step):
        time.sleep(args.sleep)

    train(
        loaded,
        get("defenses", args.defense).obj(**params),
        dataset,
        config,
        args.run_dir,
        eval_fn=pause if args.sleep else None,
        progress=False,
    )
    cleanup_distributed()


if __name__ == "__main__":
    main()
