"""Paired comparison of two models on the same test images (and training seeds).

The unit is the sample: per model a 0/1 outcome per (seed, image), the same images for both
models. `compare(a, b)` gives the difference A - B in points with a 95% hierarchical bootstrap
interval and a paired test; `holm` corrects many comparisons; `sentence` words the result with
the one rule for "beats" (docs/statistics.md).

Interval: each replicate resamples the seeds with replacement and the images with replacement,
the same image draw for both models and for every seed drawn (the test images are shared across
seeds, so their difficulty is too). Only the distinct per-image patterns of A - B across seeds
matter, so an image draw is a multinomial count over those patterns: 10,000 replicates cost
O(10,000 x patterns), not O(10,000 x images). With one seed this is the ordinary paired bootstrap.

Test: exact McNemar, a two-sided binomial test of the discordant pairs (A right and B wrong vs
A wrong and B right) at p = 0.5 (scipy.stats.binomtest), pooled over every (seed, image) pair
when there are several seeds. It tests these trained models on these images; the interval (seeds
resampled) is what speaks for the method.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import binomtest

LEVEL = 0.95
RESAMPLES = 10_000


@dataclass(frozen=True)
class Comparison:
    """A - B on paired 0/1 outcomes; accuracies and differences in points (percent)."""

    a: str
    b: str
    diff: float
    lo: float
    hi: float
    p: float
    acc_a: float
    acc_b: float
    n_images: int
    n_seeds: int
    a_only: int  # (seed, image) pairs A got right and B wrong
    b_only: int  # ... B right and A wrong
    per_seed: list[float] = field(default_factory=list)
    metric: str = ""
    view: str = ""
    eps: str = ""
    p_holm: float | None = None
    level: float = LEVEL
    resamples: int = RESAMPLES
    test: str = "exact McNemar (binomial test of the discordant pairs, pooled over seeds)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def p_used(self) -> float:
        """The p-value a verdict uses: Holm-corrected when the comparison was one of many."""
        return self.p if self.p_holm is None else self.p_holm


def as_matrix(outcomes: Any) -> np.ndarray:
    """(seeds, images) bool matrix from a vector (one seed) or a matrix."""
    m = np.asarray(outcomes)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[1] == 0:
        raise ValueError(f"outcomes must be (images,) or (seeds, images), got shape {m.shape}")
    if not np.isin(m, (0, 1)).all():
        raise ValueError("outcomes must be 0/1 (correct or not)")
    return m.astype(bool)


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts (1.0 when there are none)."""
    n = a_only + b_only
    return 1.0 if n == 0 else float(binomtest(a_only, n, 0.5).pvalue)


def bootstrap_means(values: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Bootstrap replicates of the mean of a (seeds, images) matrix of per-sample values:
    seeds and images resampled with replacement, the image draw shared by every seed drawn."""
    rng = np.random.default_rng(seed)
    n_seeds, n = values.shape
    patterns, counts = np.unique(values, axis=1, return_counts=True)  # (S, K), (K,)
    image_counts = rng.multinomial(n, counts / n, size=resamples)  # (R, K)
    seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=resamples)
    per_seed_sum = image_counts @ patterns.T.astype(np.float64)  # (R, S) sums over the draw
    return np.einsum("rs,rs->r", seed_counts, per_seed_sum) / (n_seeds * n)


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(replicates, [tail, 1.0 - tail])
    return float(lo), float(hi)


def compare(
    a: Any,
    b: Any,
    *,
    names: tuple[str, str] = ("A", "B"),
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
    **labels: str,
) -> Comparison:
    """A - B on paired outcomes: `a`, `b` are (images,) or (seeds, images) 0/1 arrays over the
    same images (and seeds, in the same order). `labels` (metric, view, eps) are carried."""
    ma, mb = as_matrix(a), as_matrix(b)
    if ma.shape != mb.shape:
        raise ValueError(f"paired outcomes need the same shape: {ma.shape} vs {mb.shape}")
    delta = ma.astype(np.int8) - mb.astype(np.int8)
    a_only, b_only = int((delta == 1).sum()), int((delta == -1).sum())
    lo, hi = percentile_interval(bootstrap_means(delta, resamples, seed), level)
    return Comparison(
        a=names[0],
        b=names[1],
        diff=100.0 * float(delta.mean()),
        lo=100.0 * lo,
        hi=100.0 * hi,
        p=mcnemar_p(a_only, b_only),
        acc_a=100.0 * float(ma.mean()),
        acc_b=100.0 * float(mb.mean()),
        n_images=ma.shape[1],
        n_seeds=ma.shape[0],
        a_only=a_only,
        b_only=b_only,
        per_seed=[100.0 * float(v) for v in delta.mean(axis=1)],
        level=level,
        resamples=resamples,
        **labels,
    )


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given); scipy has no Holm."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted.tolist()


def with_holm(comparisons: list[Comparison]) -> list[Comparison]:
    """The comparisons with their Holm-corrected p-values filled in (one family)."""
    adjusted = holm([c.p for c in comparisons])
    return [Comparison(**{**c.to_dict(), "p_holm": q}) for c, q in zip(comparisons, adjusted)]


def accuracy_interval(
    outcomes: Any, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> tuple[float, float, str]:
    """(lo, hi, method) in points for the mean accuracy of one model over seeds and images: the
    Clopper-Pearson interval when every seed gave the same outcomes (a deterministic model is one
    evaluation, whatever the seed count), else the hierarchical bootstrap."""
    m = as_matrix(outcomes)
    if (m == m[0]).all():
        ci = binomtest(int(m[0].sum()), m.shape[1]).proportion_ci(level, method="exact")
        return 100.0 * ci.low, 100.0 * ci.high, "clopper-pearson"
    lo, hi = percentile_interval(bootstrap_means(m.astype(np.int8), resamples, seed), level)
    return 100.0 * lo, 100.0 * hi, "bootstrap"


def clopper_pearson(correct: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact binomial interval in points for `correct` of `n`."""
    ci = binomtest(int(correct), int(n)).proportion_ci(level, method="exact")
    return 100.0 * ci.low, 100.0 * ci.high


# -- wording --------------------------------------------------------------------------------------
def verdict(c: Comparison, alpha: float = 0.05) -> str:
    """'beats', 'loses to' or 'cannot be told apart from': A beats B only when the interval
    excludes 0 on the positive side and the (corrected) p is below alpha; likewise the other way."""
    if c.lo > 0 and c.p_used < alpha:
        return "beats"
    if c.hi < 0 and c.p_used < alpha:
        return "loses to"
    return "cannot be told apart from"


def _p_text(p: float) -> str:
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.2g}" if p < 0.01 else f"p = {p:.2f}"


def what(c: Comparison) -> str:
    """'robust@1/255, cifar10-jpegs_test_unseen' from the carried labels."""
    metric = c.metric or "accuracy"
    head = f"{metric}@{c.eps}" if c.eps and metric != "clean" else metric
    return ", ".join(x for x in (head, c.view) if x)


def line(c: Comparison) -> str:
    """`tecoa - clip, robust@1/255, unseen: +5.4 [+2.9, +7.8], p = 0.0004 (1000 images x 3
    seeds)`; with Holm: `p = 0.0004, Holm p = 0.0012`."""
    p = _p_text(c.p) + ("" if c.p_holm is None else f", Holm {_p_text(c.p_holm)}")
    seeds = f" x {c.n_seeds} seeds" if c.n_seeds > 1 else ", 1 seed"
    return (
        f"{c.a} - {c.b}, {what(c)}: {c.diff:+.1f} [{c.lo:+.1f}, {c.hi:+.1f}], {p} "
        f"({c.n_images} images{seeds})"
    )


def sentence(c: Comparison) -> str:
    """The README template: 'tecoa beats clip on robust@1/255, unseen (+5.4 points, 95% interval
    [+2.9, +7.8], p = 0.0004; 1000 images x 3 seeds).'"""
    p = _p_text(c.p_used).replace("p", "Holm p", 1) if c.p_holm is not None else _p_text(c.p)
    seeds = f" x {c.n_seeds} seeds" if c.n_seeds > 1 else ", 1 seed"
    return (
        f"{c.a} {verdict(c)} {c.b} on {what(c)} ({c.diff:+.1f} points, "
        f"{round(100 * c.level)}% interval [{c.lo:+.1f}, {c.hi:+.1f}], {p}; "
        f"{c.n_images} images{seeds})."
    )


__all__ = [
    "Comparison",
    "accuracy_interval",
    "bootstrap_means",
    "clopper_pearson",
    "compare",
    "holm",
    "line",
    "mcnemar_p",
    "percentile_interval",
    "sentence",
    "verdict",
    "with_holm",
]
