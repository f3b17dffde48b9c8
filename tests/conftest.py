"""Shared test set-up: offline environment, the shared assets, throwaway plugins.

CLIPX_CACHE is left alone on purpose: the pre-trained small CLIP ("procedural-small") is cached
there by content hash, so it is trained once per machine, not once per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_assets = REPO.parent / "shared" / "assets"
if not os.environ.get("CLIPX_ASSETS") and _assets.is_dir():
    os.environ["CLIPX_ASSETS"] = str(_assets)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture
def register_plugin():
    """register_plugin(obj, name) -> obj: pm.register for the duration of one test."""
    from clip_robust_ext.plugins import pm

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
