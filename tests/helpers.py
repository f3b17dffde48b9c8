"""Shared test helpers (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import pytest

from clip_robust_ext.data.templates import CIFAR10_CLASSES as _CIFAR10

REPO = Path(__file__).resolve().parents[1]
CIFAR10_CLASSES = list(_CIFAR10)


def assets() -> Path:
    """The shared offline assets folder, or skip."""
    path = Path(os.environ.get("CLIPX_ASSETS", REPO.parent / "shared" / "assets"))
    if not (path / "small_clip" / "clipx-small-c10.pt").is_file():
        pytest.skip(f"offline assets not found at {path} (set CLIPX_ASSETS)")
    return path


def tiny_clip(seed: int = 0):
    """A randomly initialised clipx-tiny: for plumbing tests only (it predicts one class)."""
    import torch

    from clip_robust_ext.models import load_clip

    torch.manual_seed(seed)
    return load_clip("clipx-tiny")


@lru_cache(maxsize=1)
def _small_c10_state():
    from clip_robust_ext.models import read_state_dict

    return read_state_dict(assets() / "small_clip" / "clipx-small-c10.pt")


def small_c10():
    """The real small CLIP trained on CIFAR-10 (fresh copy per call)."""
    from clip_robust_ext.models import load_clip, load_into_clip

    folder = assets() / "small_clip"
    loaded = load_clip("clipx-small-c10", config=folder / "clipx-small-c10.json")
    load_into_clip(loaded.model, _small_c10_state(), "clipx-small-c10.pt")
    return loaded


@lru_cache(maxsize=1)
def cifar10_test():
    from clip_robust_ext.data import TarImageFolder

    return TarImageFolder(assets() / "cifar10_test_jpegs.tar.gz", "test")


def cifar10_batch(n: int, seed: int = 0):
    import torch

    from clip_robust_ext.data import sample_indices

    ds = cifar10_test()
    idx = sample_indices(len(ds), n, seed)
    xs, ys = zip(*(ds[i] for i in idx))
    return torch.stack(xs), torch.tensor(ys)


def robust_flags(run_dir: Path, label: str, protocol: str, view: str, attack: str):
    """Per-image outcomes (clean and correct under `attack`, the records' per-attack accuracy)
    of one model in a run dir, with the image indices: the unit a paired test compares."""
    import json

    import numpy as np

    from clip_robust_ext.evaluation.records import result_path

    data = json.loads(result_path(run_dir, label, protocol, view).read_text())
    samples = data["samples"]
    key = next(k for k in samples["attacks"] if k == attack or k.startswith(f"{attack}@"))
    clean = np.array([c == "1" for c in samples["clean"]])
    return samples["indices"], clean & np.array([c == "1" for c in samples["attacks"][key]])


def paired_effect(a, b) -> dict:
    """A - B on the same images, in points: the difference, its 95% normal interval over the
    per-image differences, and the exact McNemar p (scipy's two-sided binomial test on the
    images only one of them gets right)."""
    import numpy as np
    from scipy.stats import binomtest

    d = a.astype(float) - b.astype(float)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("inf")
    gained, lost = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0
    diff = 100 * d.mean()
    return {
        "diff": diff,
        "lo": diff - 100 * half,
        "hi": diff + 100 * half,
        "p": p,
        "gained": gained,
        "lost": lost,
    }
