"""Analysis of trained models beyond one accuracy table (`clipx interpolate`, `clipx features`).

Each command writes its data as JSON next to its plots, with the protocol, seed and versions, so
a figure can be traced and redrawn. Heavy modules load on first use."""

from __future__ import annotations

from ..utils.lazy import lazy_exports

_LAZY = {
    "ModelArg": ".common",
    "resolve_models": ".common",
    "blend_state": ".interpolate",
    "check_same_architecture": ".interpolate",
    "run_interpolation": ".interpolate",
    "embed_clean_and_adversarial": ".features",
    "feature_stats": ".features",
    "run_features": ".features",
}

__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = sorted(_LAZY)
