"""The scopes table (docs/scopes.md) from a `clipx recipe run scopes` run and the cost benchmark.

    python docs/results/scopes/table.py RUN_DIR docs/results/scopes/costs.json > docs/results/scopes/table.md

Accuracy cells: mean over seeds with a 95% interval (evaluation/paired.py: Clopper-Pearson when
every seed gave the same outcomes, else the hierarchical bootstrap over seeds and images). The
"vs full" columns: the paired difference from the same defense at scope full (hierarchical
bootstrap interval, exact McNemar p), i.e. `clipx compare RUN:A RUN:B`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from clip_robust_ext.evaluation.outcomes import load_outcomes
from clip_robust_ext.evaluation.paired import accuracy_interval
from clip_robust_ext.evaluation.pairing import compare_models, model_blocks

METHODS = ("tecoa", "fare")
SCOPES = ("full", "lora", "first-blocks")
EPS = "1/255"
VIEWS = ("unseen", "seen")
METRICS = ("clean", "robust")


def _view(blocks, label: str, view: str) -> list:
    mine = [b for b in model_blocks(blocks, label, label) if b.view.endswith(f"_{view}")]
    return sorted(mine, key=lambda b: b.seed)


def accuracy_cell(blocks, label: str, view: str, metric: str) -> str:
    found = _view(blocks, label, view)
    m = np.stack([b.metric(metric, EPS) for b in found])
    lo, hi, _ = accuracy_interval(m)
    return f"{100 * m.mean():.1f} [{lo:.1f}, {hi:.1f}]"


def diff_cell(run: Path, label: str, view: str, metric: str) -> str:
    full = f"{label.split('-')[0]}-full"
    if label == full:
        return "-"
    views = {b.view for b in load_outcomes(run) if b.view.endswith(f"_{view}")}
    c = compare_models(f"{run}:{label}", f"{run}:{full}", view=views.pop(), eps=EPS, metric=metric)
    return f"{c.diff:+.1f} [{c.lo:+.1f}, {c.hi:+.1f}] p={c.p:.2g}"


def complete(blocks: list) -> list:
    """Only the seeds for which every model was evaluated on every view (a run stopped midway
    leaves a partial seed)."""
    labels = ["clip"] + [f"{m}-{s}" for m in METHODS for s in SCOPES]
    have = {(b.label, b.view.rsplit("_", 1)[-1], b.seed) for b in blocks}
    seeds = {b.seed for b in blocks}
    keep = {s for s in seeds if all((lb, v, s) in have for lb in labels for v in VIEWS)}
    return [b for b in blocks if b.seed in keep]


def main(run: Path, costs: Path) -> None:
    blocks = complete(load_outcomes(run))
    summary = json.loads(costs.read_text())["summary"]
    seeds = sorted({b.seed for b in blocks})
    print(f"Seeds {seeds}; {EPS}; accuracy in % [95% interval]; Δ = paired difference from full.\n")
    print(
        "| defense | scope | trainable params (× full) | CPU s/step (× full) | peak MiB added "
        "(× full) | artifact (× full) |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for label, row in summary.items():
        r = row["ratio_to_full"]
        method, scope = label.split("-", 1)
        print(
            f"| {method} | {scope} | {row['trainable_params']:,.0f} ({r['trainable_params']:.3f}) | "
            f"{row['cpu_s_per_step']:.2f} ({r['cpu_s_per_step']:.2f}) | "
            f"{row['peak_mib_added']:.0f} ({r['peak_mib_added']:.2f}) | "
            f"{row['artifact_bytes'] / 2**20:.2f} MiB ({r['artifact_bytes']:.3f}) |"
        )
    for view in VIEWS:
        print(f"\n**{view} classes**\n")
        print("| defense | scope | clean | robust | Δ clean vs full | Δ robust vs full |")
        print("|---|---|---:|---:|---:|---:|")
        labels = ["clip"] + [f"{m}-{s}" for m in METHODS for s in SCOPES]
        for label in labels:
            cells = [accuracy_cell(blocks, label, view, m) for m in METRICS]
            diffs = (
                ["-", "-"] if label == "clip" else [diff_cell(run, label, view, m) for m in METRICS]
            )
            method, _, scope = label.partition("-")
            print(f"| {method} | {scope or 'start model'} | " + " | ".join(cells + diffs) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
