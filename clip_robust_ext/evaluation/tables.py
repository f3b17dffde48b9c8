"""Human tables (markdown), machine tables (CSV) and the robust-accuracy-vs-eps plot.

One table per protocol: rows are model labels (methods), columns are `<dataset> clean` and
`<dataset> robust` (`robust@<eps>` when several budgets ran), then the averages over datasets.
Accuracies are percent."""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..utils.io import atomic_write, atomic_write_text
from . import records as R
from .certified_card import KIND, certified_csv_rows, certified_table
from .retrieval import retrieval_table


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _by_protocol(records: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        groups[rec.get("protocol", "?")].append(rec)
    return dict(groups)


def table_rows(records: list[dict]) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) for the records of ONE protocol: label, per-dataset clean/robust, averages."""
    labels = list(dict.fromkeys(r["label"] for r in records))
    datasets = list(dict.fromkeys(r.get("dataset_key", r["dataset"]) for r in records))
    budgets = sorted({r["eps"] for r in records if r.get("eps") is not None})
    eps_str = {r["eps"]: r.get("eps_str") for r in records if r.get("eps") is not None}
    sweep = len(budgets) > 1
    rcols = [(e, f"robust@{eps_str[e]}" if sweep else "robust") for e in budgets]
    # several attacks (e.g. mmcoa: image, text, multimodal): one column per attack as well
    names = list(dict.fromkeys(a for r in records for a in (r.get("per_attack") or {})))
    acols = [(e, a, f"{a}@{eps_str[e]}" if sweep else a) for e in budgets for a in names]
    acols = acols if len(names) > 1 else []
    header = ["model"]
    for d in datasets:
        header += [f"{d} clean"] + [f"{d} {name}" for _, name in rcols]
        header += [f"{d} {name}" for _, _, name in acols]
    header += ["avg clean"] + [f"avg {name}" for _, name in rcols]
    header += [f"avg {name}" for _, _, name in acols]

    index: dict[tuple, dict] = {}
    for r in records:
        index[(r["label"], r.get("dataset_key", r["dataset"]), r.get("eps"))] = r
    rows = []
    for label in labels:
        row: list[Any] = [label]
        cleans: list[float] = []
        robusts: dict[Any, list[float]] = defaultdict(list)
        for d in datasets:
            any_rec = next((r for (lb, dk, _), r in index.items() if lb == label and dk == d), None)
            clean = any_rec["clean_acc"] if any_rec else None
            row.append(clean)
            if clean is not None:
                cleans.append(clean)
            for e, _ in rcols:
                rec = index.get((label, d, e))
                value = rec["robust_acc"] if rec else None
                row.append(value)
                if value is not None:
                    robusts[e].append(value)
            for e, a, _ in acols:
                rec = index.get((label, d, e))
                value = (rec.get("per_attack") or {}).get(a) if rec else None
                row.append(value)
                if value is not None:
                    robusts[(e, a)].append(value)
        complete = len(cleans) == len(datasets)
        row.append(sum(cleans) / len(cleans) if complete else None)
        for e, _ in rcols:
            vals = robusts[e]
            row.append(sum(vals) / len(vals) if len(vals) == len(datasets) else None)
        for e, a, _ in acols:
            vals = robusts[(e, a)]
            row.append(sum(vals) / len(vals) if len(vals) == len(datasets) else None)
        rows.append(row)
    return header, rows


def markdown_table(records: list[dict]) -> str:
    """Markdown: one section per protocol (averages left blank when a dataset is missing)."""
    parts = []
    for proto, recs in _by_protocol(records).items():
        if recs[0].get("kind") == "retrieval":  # recall tables (clipx_coattack)
            parts.append(retrieval_table(recs))
            continue
        if recs[0].get("kind") == KIND:  # randomized smoothing (the certify protocol)
            parts.append(certified_table(recs))
            continue
        header, rows = table_rows(recs)
        first = recs[0]
        eps = [s for _, s in sorted({(r["eps"], r["eps_str"]) for r in recs if r.get("eps_str")})]
        attacks = sorted({r.get("attack", "") for r in recs})
        parts.append(
            f"### {proto}\n\n"
            f"attacks: {', '.join(attacks)}; {first.get('norm', 'Linf')} eps {', '.join(eps) or '-'}; "
            f"n per dataset: {', '.join(sorted({str(r['n']) for r in recs}))}; seed {first.get('seed')}; "
            "accuracy in percent, robust = per-sample worst case over the attacks\n"
        )
        parts.append(_markdown(header, rows))
    return "\n".join(parts)


def _markdown(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join([str(row[0])] + [_fmt(v) for v in row[1:]]) + " |")
    return "\n".join(lines) + "\n"


def csv_table(records: list[dict]) -> str:
    """CSV of the same tables, a `protocol` column first; blank cells for missing results."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    for proto, recs in _by_protocol(records).items():
        if recs[0].get("kind") == "retrieval":
            for r in recs:
                for k, v in r["recall"].items():
                    writer.writerow(
                        [
                            proto,
                            r["label"],
                            r["attack"],
                            r["eps_str"],
                            k,
                            f"{v:.4f}",
                            f"{r['asr'].get('ASR_' + k, 0.0):.4f}",
                        ]
                    )
            continue
        if recs[0].get("kind") == KIND:
            writer.writerows(certified_csv_rows(recs))
            continue
        header, rows = table_rows(recs)
        writer.writerow(["protocol"] + header)
        for row in rows:
            writer.writerow([proto, row[0]] + ["" if v is None else f"{v:.4f}" for v in row[1:]])
    return buf.getvalue()


def plot_eps(records: list[dict], path: str | os.PathLike) -> Path | None:
    """PNG of robust accuracy against eps (one line per model and dataset); None without a sweep."""
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        if r.get("eps") is not None and r.get("robust_acc") is not None:
            groups[(r["protocol"], r["label"], r.get("dataset_key", r["dataset"]))].append(
                (r["eps"], r["robust_acc"])
            )
    groups = {k: sorted(v) for k, v in groups.items() if len(v) > 1}
    if not groups:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for (proto, label, ds), pts in groups.items():
        ax.plot(
            [e * 255 for e, _ in pts],
            [a for _, a in pts],
            marker="o",
            label=f"{label} / {ds} ({proto})",
        )
    ax.set_xlabel("eps (x 1/255)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def write_reports(
    run_dir: str | os.PathLike, records: list[dict] | None = None, stem: str = "results"
) -> dict[str, Path]:
    """results.md, results.csv (and results_eps.png after a sweep) in run_dir; returns the paths.
    `records` default: every finished result under run_dir/eval."""
    run_dir = Path(run_dir)
    if records is None:
        records = R.load_records(run_dir)
    out = {
        "markdown": atomic_write_text(run_dir / f"{stem}.md", markdown_table(records)),
        "csv": atomic_write_text(run_dir / f"{stem}.csv", csv_table(records)),
    }
    png = plot_eps(records, run_dir / f"{stem}_eps.png")
    if png is not None:
        out["plot"] = png
    return out
