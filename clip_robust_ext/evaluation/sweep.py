"""A hyper-parameter sweep's table and winners, from the run's own results.json.

A sweep run labels its models `<method>-<setting>` (e.g. `tecoa-lr1e-3`, zs-study's `sweep`
profile) and evaluates them on validation images. Each method's winner is the setting with the
best score, the mean of clean and robust accuracy (a defense that keeps neither is worthless; one
that trades all clean accuracy for robustness is not a result).

    python -m clip_robust_ext.evaluation.sweep RUN_DIR     # markdown table with the winners
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SEPARATOR = "-lr"  # the label's method / setting split (zs-study's sweep labels)


def sweep_rows(records: list[dict[str, Any]], separator: str = SEPARATOR) -> list[dict[str, Any]]:
    """One row per swept model: method, setting, clean, robust, score, and whether it won."""
    rows = []
    for rec in records:
        if separator not in rec["label"]:
            continue  # the start model
        method, setting = rec["label"].rsplit(separator, 1)
        score = (rec["clean_acc"] + rec["robust_acc"]) / 2
        rows.append(
            {
                "method": method,
                "setting": setting,
                "clean": rec["clean_acc"],
                "robust": rec["robust_acc"],
                "score": score,
            }
        )
    for method in {r["method"] for r in rows}:
        mine = [r for r in rows if r["method"] == method]
        best = max(mine, key=lambda r: r["score"])
        for r in mine:
            r["best"] = r is best
    return rows


def sweep_markdown(rows: list[dict[str, Any]], start: dict[str, Any] | None = None) -> str:
    lines = [
        "| method | lr | clean | robust | score | chosen |",
        "|---|---|---:|---:|---:|:---:|",
    ]
    if start is not None:
        lines.append(
            f"| {start['label']} (start) | | {start['clean_acc']:.1f} | {start['robust_acc']:.1f} "
            f"| {(start['clean_acc'] + start['robust_acc']) / 2:.1f} | |"
        )
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['setting']} | {r['clean']:.1f} | {r['robust']:.1f} "
            f"| {r['score']:.1f} | {'✓' if r['best'] else ''} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m clip_robust_ext.evaluation.sweep RUN_DIR", file=sys.stderr)
        return 2
    path = Path(argv[0]) / "results.json"
    if not path.is_file():
        print(f"error: {path} not found (run the sweep first)", file=sys.stderr)
        return 2
    records = json.loads(path.read_text())
    start = next((r for r in records if SEPARATOR not in r["label"]), None)
    print(sweep_markdown(sweep_rows(records), start), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
