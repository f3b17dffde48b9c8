"""Shared test set-up: offline environment, the shared assets, throwaway plugins.

CLIPX_CACHE is left alone on purpose: the pre-trained small CLIP ("procedural-small") is cached
there by content hash, so it is trained once per machine, not once per test."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]

_assets = REPO.parent / "shared" / "assets"
if not os.environ.get("CLIPX_ASSETS") and _assets.is_dir():
    os.environ["CLIPX_ASSETS"] = str(_assets)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

# property tests draw the same examples on every run (a red CI must be reproducible); set
# HYPOTHESIS_PROFILE=explore for fresh random examples
settings.register_profile("clipx", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "clipx"))


def pytest_addoption(parser):
    group = parser.getgroup("clipx order checks")
    group.addoption(
        "--shuffle",
        type=int,
        default=None,
        metavar="SEED",
        help="run the collected tests in a random order drawn from SEED (order-independence check)",
    )
    group.addoption(
        "--reverse", action="store_true", help="run the collected tests in reverse order"
    )


def pytest_collection_modifyitems(config, items):
    """--shuffle SEED / --reverse: reorder the run once to prove no test depends on another
    (the default order is untouched, so CI stays deterministic)."""
    seed = config.getoption("--shuffle")
    if seed is not None:
        random.Random(seed).shuffle(items)
    if config.getoption("--reverse"):
        items.reverse()


def pytest_report_header(config):
    seed = config.getoption("--shuffle")
    if seed is not None or config.getoption("--reverse"):
        return f"test order: shuffle={seed} reverse={config.getoption('--reverse')}"
    return None


@pytest.fixture(autouse=True)
def _seed_every_rng():
    """Every test starts from the same RNG state whatever ran before it: a test that forgets to
    seed still sees the same numbers in any order (tests that need other seeds set them)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def register_plugin():
    """register_plugin(obj, name) -> obj: pm.register for the duration of one test."""
    from clip_robust_ext.plugin_manager import pm

    names: list[str] = []

    def register(plugin: object, name: str) -> object:
        pm.register(plugin, name=name)
        names.append(name)
        return plugin

    yield register
    from clip_robust_ext.registry import registry_errors

    for name in names:
        if pm.has_plugin(name):
            pm.unregister(name=name)
    registry_errors[:] = [e for e in registry_errors if e["plugin"] not in names]
