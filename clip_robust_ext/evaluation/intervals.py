"""95% intervals for the seed summaries (results.md of a `seeds = [...]` run).

The spread over seeds leaves out the test-sample variance: a deterministic model shows "± 0.0"
over three seeds, which is one evaluation repeated. Each summary cell gets an interval for the
mean accuracy over seeds and test images instead: from the per-sample outcomes, the hierarchical
bootstrap (seeds and images resampled; paired.accuracy_interval), or Clopper-Pearson when every
seed gave the same outcomes. Rows without per-sample outcomes (runs made before they were kept)
fall back to the per-seed values and n: Clopper-Pearson when the values agree, else a normal
interval whose variance adds the seed-to-seed and the binomial parts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ClipxUsageError
from .outcomes import Block
from .paired import accuracy_interval, clopper_pearson

Z95 = 1.959963984540054


def from_values(stat: dict[str, Any], n: int | None) -> tuple[float, float, str] | None:
    """The fallback interval from the per-seed values and the number of test images."""
    values = stat.get("values") or []
    if not values or not n:
        return None
    mean = sum(values) / len(values)
    if max(values) - min(values) < 1e-9:
        lo, hi = clopper_pearson(round(mean * n / 100.0), n)
        return lo, hi, "clopper-pearson"
    p = mean / 100.0
    var = (stat.get("std") or 0.0) ** 2 / len(values) + 1e4 * p * (1 - p) / n
    half = Z95 * math.sqrt(var)
    return max(0.0, mean - half), min(100.0, mean + half), "normal (seeds + binomial)"


def _from_outcomes(
    blocks: list[Block], metric: str, eps: str | None, resamples: int
) -> tuple[float, float, str] | None:
    try:
        outcomes = np.stack([b.metric(metric, eps) for b in blocks])
    except ClipxUsageError:  # a metric the outcomes cannot give: the fallback says what it can
        return None
    return accuracy_interval(outcomes, resamples)


def add_intervals(rows: list[dict[str, Any]], blocks: list[Block], resamples: int = 10_000) -> None:
    """Set stat['ci'] = [lo, hi] and stat['ci_method'] on every metric of every summary row."""
    by_model: dict[tuple[str, str], list[Block]] = {}
    for b in sorted(blocks, key=lambda b: (b.seed is None, b.seed)):
        by_model.setdefault((b.label, b.view), []).append(b)
    for row in rows:
        if row.get("kind") == "retrieval":
            continue
        mine = by_model.get((row["label"], row["dataset_key"]), [])
        usable = [b.seed for b in mine] == row.get("seeds")
        for name, stat in row.items():
            if not (isinstance(stat, dict) and "values" in stat):
                continue
            found = _from_outcomes(mine, name, row.get("eps_str"), resamples) if usable else None
            found = found or from_values(stat, row.get("n"))
            if found:
                stat["ci"] = [round(found[0], 4), round(found[1], 4)]
                stat["ci_method"] = found[2]


__all__ = ["add_intervals", "from_values"]
