"""Mean and spread over seeds: one number per (model, dataset view, budget) with its std and n.

A single run is not a finding: a recipe with `[recipe] seeds = [0, 1, 2]` runs once per seed and
its tables come from here. Each per-seed record carries `run_seed`; the aggregate keeps the
per-seed values so that nothing is averaged away silently."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..utils.io import atomic_write, atomic_write_json, atomic_write_text
from .intervals import add_intervals
from .outcomes import blocks_from_run, write_samples


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _key(rec: dict[str, Any]) -> tuple[str, str, Any]:
    return rec["label"], rec.get("dataset_key", rec["dataset"]), rec.get("eps")


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (label, dataset_key, eps): clean / robust / per-attack mean, std, values.
    Retrieval records: one row per (label, attack, eps), see `aggregate_retrieval`."""
    if records and all(r.get("kind") == "retrieval" for r in records):
        return aggregate_retrieval(records)
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        groups[_key(rec)].append(rec)
    out = []
    for (label, dkey, eps), recs in groups.items():
        recs = sorted(recs, key=lambda r: r.get("run_seed", 0))
        row: dict[str, Any] = {
            "label": label,
            "dataset_key": dkey,
            "eps": eps,
            "eps_str": recs[0].get("eps_str"),
            "class_split": recs[0].get("class_split"),
            "seeds": [r.get("run_seed") for r in recs],
            "n_seeds": len(recs),
            "n": recs[0].get("n"),
            "components": recs[0].get("components", {}),
        }
        metrics = {"clean": [r["clean_acc"] for r in recs]}
        if eps is not None:
            metrics["robust"] = [r["robust_acc"] for r in recs]
            for name in recs[0].get("per_attack") or {}:
                metrics[name] = [r["per_attack"][name] for r in recs]
        for name, values in metrics.items():
            mean, std = mean_std(values)
            row[name] = {"mean": mean, "std": std, "values": values}
        out.append(row)
    return out


def aggregate_retrieval(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Retrieval records (coattack-retrieval): one row per (label, attack, eps) with every R@K
    and attack success rate as mean, std and the per-seed values."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        groups[(rec["label"], rec["attack"], rec.get("eps"))].append(rec)
    out = []
    for (label, attack, eps), recs in groups.items():
        recs = sorted(recs, key=lambda r: r.get("run_seed", 0))
        row: dict[str, Any] = {
            "kind": "retrieval",
            "label": label,
            "attack": attack,
            "eps": eps,
            "eps_str": recs[0].get("eps_str"),
            "seeds": [r.get("run_seed") for r in recs],
            "n_seeds": len(recs),
            "n_images": recs[0].get("n_images"),
            "n_texts": recs[0].get("n_texts"),
        }
        for group in ("recall", "asr"):
            row[group] = {}
            for k in recs[0][group]:
                values = [r[group][k] for r in recs]
                mean, std = mean_std(values)
                row[group][k] = {"mean": mean, "std": std, "values": values}
        out.append(row)
    return out


def retrieval_spread_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: a row per (model, attack): R@K and attack success rate, mean ± std over seeds."""
    ks = sorted(rows[0]["recall"], key=lambda s: (s[:2], int(s.split("@")[1])))
    head = ["model", "attack", "eps", "seeds", *ks, *(f"ASR {k}" for k in ks)]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|---:|" + "---:|" * (2 * len(ks))]
    for r in rows:
        cells = [r["label"], r["attack"], r["eps_str"] if r["eps"] is not None else "-"]
        cells += [str(r["n_seeds"]), *(_cell(r["recall"][k]) for k in ks)]
        cells += [_cell(r["asr"].get("ASR_" + k)) for k in ks]
        lines.append("| " + " | ".join(cells) + " |")
    return (
        f"{rows[0]['n_images']} images, {rows[0]['n_texts']} captions per seed; recall in percent; "
        "ASR = clean R@K - adversarial R@K\n\n" + "\n".join(lines) + "\n"
    )


def _cell(stat: dict[str, Any] | None) -> str:
    """'59.4 [47.3, 70.2]' (mean, 95% interval) when intervals were added, else 'mean ± std'."""
    if stat is None:
        return ""
    if stat.get("ci"):
        return f"{stat['mean']:.1f} [{stat['ci'][0]:.1f}, {stat['ci'][1]:.1f}]"
    return f"{stat['mean']:.1f} ± {stat['std']:.1f}"


INTERVAL_NOTE = (
    "Mean over seeds with its 95% interval in brackets: seeds and test images resampled "
    "(hierarchical bootstrap), or Clopper-Pearson where every seed gave the same per-sample "
    "outcomes; per-seed values in summary.json. Differences between models: `clipx compare`.\n\n"
)


def spread_table(rows: list[dict[str, Any]]) -> str:
    """Markdown, one table per dataset view: a row per model; clean, the worst case at each
    budget and, when several attacks ran, each attack (mean and 95% interval, see intervals.py;
    mean ± std for rows without intervals)."""
    labels = list(dict.fromkeys(r["label"] for r in rows))
    views = list(dict.fromkeys(r["dataset_key"] for r in rows))
    budgets = sorted({r["eps"] for r in rows if r["eps"] is not None})
    eps_str = {r["eps"]: r["eps_str"] for r in rows if r["eps"] is not None}
    attacks = _attack_names(rows)
    tag = (lambda e: f"@{eps_str[e]}") if len(budgets) > 1 else (lambda e: "")
    index = {(r["label"], r["dataset_key"], r["eps"]): r for r in rows}
    out = []
    for view in views:
        header = ["model", "seeds", "clean"] + [f"robust{tag(e)}" for e in budgets]
        header += [f"{a}{tag(e)}" for e in budgets for a in attacks]
        lines = [f"**{view}**", "", "| " + " | ".join(header) + " |"]
        lines.append("|---|---:|" + "---:|" * (len(header) - 2))
        for label in labels:
            mine = [r for (lb, dk, _), r in index.items() if lb == label and dk == view]
            if not mine:
                continue
            cells = [label, str(mine[0]["n_seeds"]), _cell(mine[0]["clean"])]
            cells += [_cell((index.get((label, view, e)) or {}).get("robust")) for e in budgets]
            cells += [
                _cell((index.get((label, view, e)) or {}).get(a)) for e in budgets for a in attacks
            ]
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    note = (
        INTERVAL_NOTE
        if any(isinstance(v, dict) and v.get("ci") for r in rows for v in r.values())
        else ""
    )
    return note + "\n\n".join(out) + "\n"


def unseen_view(rows: list[dict[str, Any]]) -> str | None:
    """The headline view: the first dataset restricted to its unseen classes, 'subset' labels."""
    for r in rows:
        split = r.get("class_split") or {}
        if split.get("classes") == "unseen" and split.get("label_space") == "subset":
            return r["dataset_key"]
    return None


def _attack_names(rows: list[dict[str, Any]]) -> list[str]:
    """The per-attack metrics of aggregated rows (none when a single attack ran: its number is
    the worst case)."""
    fixed = {
        "label",
        "dataset_key",
        "eps",
        "eps_str",
        "class_split",
        "seeds",
        "n_seeds",
        "n",
        "components",
    }
    names = list(dict.fromkeys(k for r in rows for k in r if k not in fixed | {"clean", "robust"}))
    return names if len(names) > 1 else []


def plot_unseen(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path | None:
    """Clean vs robust accuracy on the unseen classes, one point per model with std error bars;
    a panel per budget for the worst case and, when several attacks ran, for each attack.
    None when no unseen view was evaluated under attack."""
    view = unseen_view(rows)
    if view is None:
        return None
    mine = [r for r in rows if r["dataset_key"] == view and r["eps"] is not None]
    budgets = sorted({r["eps"] for r in mine})
    if not budgets:  # clean-only protocol: nothing to plot against
        return None
    import matplotlib  # only when plotting: keeps `import clip_robust_ext` light

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(e, m) for e in budgets for m in ["robust", *_attack_names(mine)]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.5), squeeze=False)
    for ax, (eps, metric) in zip(axes[0], panels):
        # a metric some models lack (an undefended model has no non-adaptive attack) is skipped
        for r in (r for r in mine if r["eps"] == eps and metric in r):
            x, y = r["clean"], r[metric]
            ax.errorbar(x["mean"], y["mean"], xerr=x["std"], yerr=y["std"], fmt="o", capsize=3)
            ax.annotate(
                r["label"],
                (x["mean"], y["mean"]),
                fontsize=8,
                xytext=(4, 4),
                textcoords="offset points",
            )
        name = "worst case" if metric == "robust" else metric
        ax.set_xlabel(f"clean accuracy on {view} (%)")
        ax.set_ylabel(f"{name} accuracy (%)")
        ax.set_title(f"{name}, eps {next(r['eps_str'] for r in mine if r['eps'] == eps)}")
        ax.grid(alpha=0.3)
    seeds = max(r["n_seeds"] for r in mine)
    fig.suptitle(f"unseen classes ({view}): mean ± std over {seeds} seeds")
    fig.tight_layout()
    out = atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
    return out


def write_spread(run_dir: str | os.PathLike, rows: list[dict[str, Any]]) -> str:
    """summary.md (the mean ± std table) and transfer.png; returns the markdown."""
    if rows and rows[0].get("kind") == "retrieval":
        table = retrieval_spread_table(rows)
        atomic_write_text(Path(run_dir) / "summary.md", table)
        return table
    table = spread_table(rows)
    atomic_write_text(Path(run_dir) / "summary.md", table)
    plot_unseen(rows, Path(run_dir) / "transfer.png")
    return table


def write_seed_summary(run_dir: str | os.PathLike, records: list[dict[str, Any]]) -> str:
    """A multi-seed run's summary.json, summary.md, results.md (with 95% intervals from the
    per-sample outcomes of its seed-*/ folders), transfer.png and samples.npz; the markdown."""
    blocks = blocks_from_run(run_dir)
    rows = aggregate(records)
    add_intervals(rows, blocks)
    atomic_write_json(Path(run_dir) / "summary.json", rows)
    table = write_spread(run_dir, rows)
    atomic_write_text(Path(run_dir) / "results.md", table)
    if blocks:
        write_samples(blocks, Path(run_dir) / "samples.npz")
    return table
