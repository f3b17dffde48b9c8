"""Every adversarial batch is checked before it is counted: finite, in [0, 1], inside the ball."""

from __future__ import annotations

import torch

from ..errors import AdversarialCheckError

_TOL = 1e-5  # float round-off of clamp/projection in pixel space


def verify_adversarial(
    x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str = "Linf", attack: str = "attack"
) -> None:
    """Raise AdversarialCheckError naming the attack if x_adv leaves the threat model."""
    if x_adv.shape != x.shape:
        raise AdversarialCheckError(
            f"{attack}: returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}"
        )
    if not torch.isfinite(x_adv).all():
        raise AdversarialCheckError(f"{attack}: returned non-finite pixels")
    lo, hi = float(x_adv.min()), float(x_adv.max())
    if lo < -_TOL or hi > 1 + _TOL:
        raise AdversarialCheckError(f"{attack}: pixels outside [0, 1] (min {lo:.6f}, max {hi:.6f})")
    delta = (x_adv - x).flatten(1)
    if norm == "Linf":
        dist = float(delta.abs().max()) if delta.numel() else 0.0
    elif norm == "L2":
        dist = float(delta.norm(dim=1).max()) if delta.numel() else 0.0
    elif norm == "L1":
        dist = float(delta.abs().sum(dim=1).max()) if delta.numel() else 0.0
    else:
        raise AdversarialCheckError(f"{attack}: unknown norm {norm!r}")
    if dist > eps + _TOL:
        raise AdversarialCheckError(f"{attack}: {norm} distance {dist:.6f} exceeds eps {eps:.6f}")
