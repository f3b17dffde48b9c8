"""Analysis of trained models beyond one accuracy table (`clipx interpolate`, `clipx features`).

Each command writes its data as JSON next to its plots, with the protocol, seed and versions, so
a figure can be traced and redrawn. Heavy modules load on first use."""

from __future__ import annotations

import importlib

_LAZY = {
    "ModelArg": "common",
    "resolve_models": "common",
    "blend_state": "interpolate",
    "check_same_architecture": "interpolate",
    "run_interpolation": "interpolate",
    "embed_clean_and_adversarial": "features",
    "feature_stats": "features",
    "run_features": "features",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


__all__ = sorted(_LAZY)
