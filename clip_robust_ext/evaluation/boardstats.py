"""Leaderboard statistics: an interval for each card's ranked number and ranks that only separate
what a test can tell apart.

The ranked number is robust accuracy at the largest eps, averaged over the protocol's datasets.
Interval: Clopper-Pearson on the card's samples pooled over its datasets (one card is one
evaluation). Rank: walking down the sorted list, an entry that cannot be told apart from the one
above (paired.verdict: interval containing 0 or p >= 0.05) shares its rank. The test is the paired
comparison (bootstrap interval, exact McNemar) on the per-sample outcomes when both runs kept
them; otherwise Fisher's exact test on the pooled counts (unpaired: it has less power, never more
confidence). Cards from a multi-seed run (seed-<s>/cards/) get their seed in a column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import fisher_exact

from ..errors import ClipxUsageError
from .outcomes import load_outcomes, run_seed
from .paired import clopper_pearson, compare, verdict


def counts(card: dict[str, Any], eps_str: str | None) -> tuple[int, int]:
    """(correct, n) pooled over the card's datasets for robust accuracy at eps_str (clean when
    None), from the card's own numbers."""
    right = total = 0
    for r in card["results"]["per_dataset"]:
        if (r.get("eps_str") if eps_str else None) != eps_str or not r.get("n"):
            continue
        value = r.get("robust") if eps_str else r.get("clean")
        if value is None:
            continue
        right += round(value * r["n"] / 100.0)
        total += r["n"]
    return right, total


def outcomes_of(path: Path, card: dict[str, Any], eps_str: str | None) -> np.ndarray | None:
    """The card's per-sample outcomes for the ranked metric, datasets concatenated in the
    protocol's order, or None when its run dir kept none."""
    try:
        blocks = load_outcomes(path)
    except (ClipxUsageError, ValueError, OSError):  # a card without its run: counts only
        return None
    views = [d["key"] for d in card["protocol"]["content"]["datasets"]]
    by_view = {b.view: b for b in blocks}
    if any(v not in by_view for v in views):
        return None
    metric = "robust" if eps_str else "clean"
    return np.concatenate([by_view[v].metric(metric, eps_str) for v in views])


def told_apart(upper: dict[str, Any], lower: dict[str, Any]) -> tuple[bool, str]:
    """Whether `lower` (ranked just below `upper`) differs from it, and how that was decided."""
    a, b = upper["_outcomes"], lower["_outcomes"]
    if a is not None and b is not None and len(a) == len(b):
        c = compare(a, b, names=(upper["model"], lower["model"]), resamples=2000)
        return verdict(
            c
        ) == "beats", f"paired: {c.diff:+.1f} [{c.lo:+.1f}, {c.hi:+.1f}], p {c.p:.2g}"
    (ka, na), (kb, nb) = upper["_counts"], lower["_counts"]
    p = fisher_exact([[ka, na - ka], [kb, nb - kb]]).pvalue if na and nb else 1.0
    return p < 0.05, f"Fisher exact (unpaired), p {p:.2g}"


def annotate(rows: list[dict[str, Any]], top: str | None) -> None:
    """Add 'ci' (95% interval of the ranked number), 'seed' and 'vs above' to each ranked row
    (its card in row['_card'] = (path, card)), then re-rank: an entry that cannot be told apart
    from the one above shares its rank."""
    key = f"robust@{top}" if top else "clean"
    for row in rows:
        path, card = row.pop("_card")
        row["_counts"] = counts(card, top)
        row["_outcomes"] = outcomes_of(path, card, top)
        k, n = row["_counts"]
        row["ci"] = "[{:.1f}, {:.1f}]".format(*clopper_pearson(k, n)) if n else None
        row["seed"] = run_seed(path.parent.parent)
    ranked = [r for r in rows if r["rank"] != "flagged"]
    ranked.sort(key=lambda r: r["rank"])
    for i, row in enumerate(ranked):
        if i == 0 or row.get(key) is None:
            row["vs above"] = "-"
            continue
        apart, how = told_apart(ranked[i - 1], row)
        row["rank"] = i + 1 if apart else ranked[i - 1]["rank"]
        row["vs above"] = ("differs: " if apart else "cannot be told apart: ") + how
    for row in rows:
        del row["_counts"], row["_outcomes"]


__all__ = ["annotate", "counts", "told_apart"]
