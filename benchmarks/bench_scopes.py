"""Cost of a parameter scope (docs/scopes.md): trainable parameters, CPU time per training step,
peak memory added by training, and artifact size, each as a ratio to scope `full`.

    python -m benchmarks.bench_scopes --out docs/results/scopes/costs.json

Every arm trains clipx-small-c10 for a few steps of the scopes recipe's setting (batch 32, PGD-2
at 1/255, AdamW) in a fresh process, so its peak resident memory (VmHWM, minus the resident size
just before train()) is its own; arms are interleaved over repeats and summarised by medians.
Times are process CPU time (one thread), which counts the work done rather than the time another
tenant of a shared machine held the core.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("tecoa", "fare")
SCOPES = ("full", "lora", "first-blocks")
LR = {"full": 5e-5, "lora": 1e-3, "first-blocks": 5e-5}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def worker(method: str, scope: str, steps: int, out: Path) -> None:
    """One arm in this (fresh) process; writes its measurements to `out`."""
    import torch

    from benchmarks.common import cifar_batch, setup_env, small_c10
    from clip_robust_ext.training import TrainConfig, train

    setup_env()
    importlib.import_module("peft")  # LoRA imports it on first use: not part of training's peak
    images, labels = cifar_batch(64)
    keep = labels < 5  # the seen classes, as in the recipe
    dataset = torch.utils.data.TensorDataset(images[keep], labels[keep])
    dataset.classnames = ["airplane", "automobile", "bird", "cat", "deer"]
    loaded = small_c10()
    config = TrainConfig(
        max_steps=steps,
        batch_size=min(32, len(dataset)),
        optimizer="adamw",
        lr=LR[scope],
        weight_decay=0.0,
        warmup_steps=2,
        scope=scope,
    )
    defense = _defense(method)
    with tempfile.TemporaryDirectory() as tmp:
        rss = _status_kib("VmRSS")
        cpu = time.process_time()
        train(loaded, defense, dataset, config, Path(tmp) / "run", progress=False)
        cpu = time.process_time() - cpu
        peak = _status_kib("VmHWM")
        run = Path(tmp) / "run"
        scope_doc = json.loads((run / "scope.json").read_text())
        adapter = run / "adapter" / "adapter_model.safetensors"
        artifact = adapter if adapter.is_file() else run / "final.pt"
        record = {
            "method": method,
            "scope": scope,
            "trainable_params": scope_doc["trainable_params"],
            "cpu_s_per_step": cpu / steps,
            "peak_mib_added": (peak - rss) / 1024,
            "artifact_bytes": artifact.stat().st_size,
            "artifact": artifact.name,
        }
    out.write_text(json.dumps(record))


def _defense(method: str):
    from clip_robust_ext.registry import get

    return get("defenses", method).obj(eps="1/255", alpha="1/255", steps=2)


def measure(repeats: int, steps: int, scopes: tuple[str, ...] = SCOPES) -> list[dict]:
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            arms = [(m, s) for m in METHODS for s in scopes]
            for method, scope in arms if r % 2 == 0 else arms[::-1]:
                out = Path(tmp) / f"{method}-{scope}-{r}.json"
                cmd = [sys.executable, "-m", "benchmarks.bench_scopes", "--worker", method, scope]
                cmd += ["--steps", str(steps), "--record", str(out)]
                subprocess.run(cmd, check=True)
                records.append({**json.loads(out.read_text()), "repeat": r})
    return records


def summarise(records: list[dict]) -> dict:
    """Medians per (method, scope) and their ratios to the same method at scope full."""
    keys = ("trainable_params", "cpu_s_per_step", "peak_mib_added", "artifact_bytes")
    table = {}
    for method in METHODS:
        for scope in SCOPES:
            arm = [r for r in records if r["method"] == method and r["scope"] == scope]
            table[f"{method}-{scope}"] = {k: statistics.median(r[k] for r in arm) for k in keys}
    for label, row in table.items():
        full = table[f"{label.split('-')[0]}-full"]
        row["ratio_to_full"] = {k: row[k] / full[k] if full[k] else None for k in keys}
    return table


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "SCOPE"))
    p.add_argument("--record", type=Path)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks/scopes.json"))
    p.add_argument("--remeasure", default="", help="scopes to measure again into --out")
    args = p.parse_args()
    if args.worker:
        worker(*args.worker, args.steps, args.record)
        return
    if args.remeasure:  # replace these scopes' records in an existing --out
        again = tuple(args.remeasure.split(","))
        kept = [r for r in json.loads(args.out.read_text())["records"] if r["scope"] not in again]
        records = kept + measure(args.repeats, args.steps, again)
    else:
        records = measure(args.repeats, args.steps)
    doc = {"steps": args.steps, "records": records, "summary": summarise(records)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc["summary"], indent=2))


if __name__ == "__main__":
    main()
