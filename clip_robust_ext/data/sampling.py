"""Deterministic subsets: evaluation samples and k-shot training sets, from a seed alone."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sample_indices(n_total: int, n: int | None, seed: int) -> list[int]:
    """n indices drawn without replacement (sorted); all when n is None or >= n_total."""
    if n is None or n >= n_total:
        return list(range(n_total))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_total, generator=g)[:n].tolist())


def few_shot_indices(targets: Sequence[int], k: int, seed: int) -> list[int]:
    """k examples per class (fewer if a class has fewer), chosen by the seed; sorted."""
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    out: list[int] = []
    for c in sorted(by_class):
        idx = by_class[c]
        perm = torch.randperm(len(idx), generator=g)[:k].tolist()
        out.extend(idx[j] for j in perm)
    return sorted(out)


def targets_of(dataset) -> list[int]:
    """Labels without decoding images when the dataset exposes them."""
    for attr in ("targets", "labels", "_labels", "y"):
        t = getattr(dataset, attr, None)
        if t is not None and len(t) == len(dataset):
            return [int(v) for v in t]
    return [int(dataset[i][1]) for i in range(len(dataset))]
