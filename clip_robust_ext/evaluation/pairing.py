"""Which outcomes two models are compared on: resolve `PATH[:LABEL]`, pick the view, budget and
metric, check that both were evaluated on the same samples under the same protocol (else refuse,
naming the fields that differ), and hand the paired (seeds, images) matrices to paired.compare."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import ClipxUsageError
from .outcomes import PAIRING_FIELDS, Block, load_outcomes
from .paired import RESAMPLES, Comparison, compare, with_holm


def parse_model(text: str) -> tuple[Path, str | None]:
    """'runs/zs-study:tecoa' -> (path, 'tecoa'); a plain path -> (path, None)."""
    if not Path(text).exists() and ":" in text:
        path, label = text.rsplit(":", 1)
        return Path(path), label or None
    return Path(text), None


def model_blocks(blocks: list[Block], label: str | None, source: str) -> list[Block]:
    labels = list(dict.fromkeys(b.label for b in blocks))
    if label is None and len(labels) == 1:
        label = labels[0]
    if label not in labels:
        what = f"no model '{label}'" if label else "several models"
        raise ClipxUsageError(f"{source}: {what}; name one as PATH:LABEL ({', '.join(labels)})")
    return [b for b in blocks if b.label == label]


def pick_view(blocks: list[Block], view: str | None) -> str:
    """--view: exact, or the view whose key ends with '_<view>'; default: the unseen classes'
    own-label view when there is one, else the first view."""
    views = list(dict.fromkeys(b.view for b in blocks))
    if view is None:
        unseen = [
            b.view
            for b in blocks
            if b.info.get("classes") == "unseen" and b.info.get("label_space") == "subset"
        ]
        return unseen[0] if unseen else views[0]
    hits = [v for v in views if v == view] or [v for v in views if v.endswith(f"_{view}")]
    if len(hits) != 1:
        raise ClipxUsageError(f"--view {view}: {len(hits)} views match; views: {', '.join(views)}")
    return hits[0]


def _eps_value(text: str) -> float:
    return float(Fraction(text.split("/")[0])) / (int(text.split("/")[1]) if "/" in text else 1)


def pick_eps(blocks: list[Block], eps: str | None, metric: str) -> str | None:
    """--eps as written in the tables ('1/255'); default: the smallest budget."""
    if metric == "clean":
        return None
    budgets = sorted({e for b in blocks for e in b.budgets}, key=_eps_value)
    if not budgets:
        raise ClipxUsageError(f"--metric {metric}: the evaluation ran no attack (use clean)")
    if eps is None:
        return budgets[0]
    if eps not in budgets:
        raise ClipxUsageError(f"--eps {eps}: budgets evaluated: {', '.join(budgets)}")
    return eps


def differences(a: list[Block], b: list[Block], eps: str | None) -> list[str]:
    """The fields on which A's and B's evaluations differ (empty: they pair)."""
    seeds_a, seeds_b = [x.seed for x in a], [x.seed for x in b]
    if seeds_a != seeds_b:
        return [f"seeds ({seeds_a} vs {seeds_b})"]
    out: list[str] = []
    for x, y in zip(a, b):
        if len(x.indices) != len(y.indices) or not np.array_equal(x.indices, y.indices):
            out.append(f"sample indices (n = {len(x.indices)} vs {len(y.indices)})")
        elif (x.labels >= 0).all() and (y.labels >= 0).all() and (x.labels != y.labels).any():
            out.append("labels")
        out += [f"{f} ({x.info.get(f)} vs {y.info.get(f)})" for f in PAIRING_FIELDS
                if x.info.get(f) != y.info.get(f)]  # fmt: skip
        if eps is not None and _attacks(x, eps) != _attacks(y, eps):
            out.append(f"attacks at {eps} ({_attacks(x, eps)} vs {_attacks(y, eps)})")
    return list(dict.fromkeys(out))


def _attacks(block: Block, eps: str) -> list:
    named = block.info.get("attacks") or {}
    keys = block.budgets.get(eps, [])
    return [(k, named.get(k.rsplit("@", 1)[0] if "@" in k else k)) for k in keys]


def matrices(
    a: list[Block], b: list[Block], metric: str, eps: str | None
) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.stack([x.metric(metric, eps) for x in a]),
        np.stack([y.metric(metric, eps) for y in b]),
    )


def compare_models(
    a: str | os.PathLike,
    b: str | os.PathLike,
    *,
    view: str | None = None,
    eps: str | None = None,
    metric: str = "robust",
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Comparison:
    """`clipx compare A B`: each `PATH[:LABEL]` (run dir, seed folder, card, samples.npz)."""
    (pa, la), (pb, lb) = parse_model(str(a)), parse_model(str(b))
    ma = model_blocks(load_outcomes(pa), la, str(a))
    mb = model_blocks(load_outcomes(pb), lb, str(b))
    return _paired(ma, mb, view, eps, metric, resamples, seed)


def _paired(
    ma: list[Block],
    mb: list[Block],
    view: str | None,
    eps: str | None,
    metric: str,
    resamples: int,
    seed: int,
) -> Comparison:
    """Compare model A's blocks with model B's on one view: refuse unless they pair."""
    view = pick_view(ma, view)
    xa = sorted((x for x in ma if x.view == view), key=lambda x: (x.seed is None, x.seed))
    xb = sorted((y for y in mb if y.view == view), key=lambda y: (y.seed is None, y.seed))
    if not xb:
        raise ClipxUsageError(f"{mb[0].label} was not evaluated on {view}")
    eps = pick_eps(xa, eps, metric)
    diff = differences(xa, xb, eps)
    if diff:
        raise ClipxUsageError(
            f"{xa[0].label} and {xb[0].label} were not evaluated on the same samples under the "
            f"same protocol ({view}); they differ in: " + "; ".join(diff)
        )
    ya, yb = matrices(xa, xb, metric, eps)
    names = (xa[0].label, xb[0].label)
    return compare(
        ya, yb, names=names, resamples=resamples, seed=seed,
        metric=metric, view=view, eps=eps or "",
    )  # fmt: skip


def compare_all(
    source: str | os.PathLike,
    reference: str,
    *,
    view: str | None = None,
    eps: str | None = None,
    metric: str = "robust",
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> list[Comparison]:
    """Every other model of a run against `reference`, Holm-corrected as one family."""
    blocks = load_outcomes(parse_model(str(source))[0])
    ref = model_blocks(blocks, reference, str(source))
    others = [lb for lb in dict.fromkeys(b.label for b in blocks) if lb != reference]
    if not others:
        raise ClipxUsageError(f"{source}: no model besides '{reference}' to compare")
    found = [
        _paired(model_blocks(blocks, lb, str(source)), ref, view, eps, metric, resamples, seed)
        for lb in others
    ]
    return with_holm(found)


__all__ = ["compare_all", "compare_models", "differences", "parse_model"]
