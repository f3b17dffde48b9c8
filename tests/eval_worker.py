"""Run `evaluate` in a separate process (torchrun or plain python) for the slow tests.

usage: eval_worker.py RUN_DIR --model clipx-small-c10|tiny --protocol JSON [--label NAME]
Prints the records as one JSON line on rank 0."""

from __future__ import annotations

import argparse
import json
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--model", default="clipx-small-c10")
    ap.add_argument(
        "--protocol", required=True, help="JSON: {protocol: preset, ...overrides} or fields"
    )
    ap.add_argument("--label", default="m")
    args = ap.parse_args(argv)

    from clip_robust_ext import get, load_clip
    from clip_robust_ext.evaluation import evaluate
    from clip_robust_ext.evaluation.distributed import world

    if args.model == "tiny":
        torch.manual_seed(0)
        loaded = load_clip("clipx-tiny")
    else:
        loaded = get("models", args.model).obj()
    records = evaluate(
        loaded, json.loads(args.protocol), args.run_dir, label=args.label, progress=False
    )
    if world()[0] == 0:
        print(json.dumps(records), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
