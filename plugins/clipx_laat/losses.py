"""LAAT's losses: alignment cross-entropy (ACE) and the cosine smoothing term ('TRADES-cos')."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clip_robust_ext.api import ClipxUsageError


def cosine_logits(features: torch.Tensor, anchors: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """cos(h(x), a_c) / tau for every class c; `anchors` are (C, D) and renormalised here."""
    if tau <= 0:
        raise ClipxUsageError(f"tau must be > 0, got {tau}")
    anchors = F.normalize(anchors.to(features.device, features.dtype), dim=-1)
    return F.normalize(features, dim=-1) @ anchors.T / tau


def ace_loss(
    features: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor, tau: float = 1.0
) -> torch.Tensor:
    """Alignment cross-entropy: CE([cos(h(x'), a_c) / tau]_c, y). tau = 1.0 is the reference default."""
    return F.cross_entropy(cosine_logits(features, anchors, tau), labels)


def smoothing_loss(features_clean: torch.Tensor, features_adv: torch.Tensor) -> torch.Tensor:
    """-cos(h(x), h(x')) averaged over the batch (gradients flow through both branches, as in the
    reference, where the clean features are not detached)."""
    return -F.cosine_similarity(features_clean, features_adv, dim=-1).mean()


def laat_loss(
    features_clean: torch.Tensor,
    features_adv: torch.Tensor,
    anchors: torch.Tensor,
    labels: torch.Tensor,
    tau: float = 1.0,
    beta: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = ACE(x_adv, y) + beta * L_smooth(x, x_adv); metrics for logging."""
    ace = ace_loss(features_adv, anchors, labels, tau)
    loss = ace
    metrics = {"ace": float(ace.detach())}
    if beta:
        smooth = smoothing_loss(features_clean, features_adv)
        loss = ace + beta * smooth
        metrics["smooth"] = float(smooth.detach())
    with torch.no_grad():
        adv_logits = cosine_logits(features_adv, anchors, tau)
        metrics["adv_acc"] = float((adv_logits.argmax(1) == labels).float().mean())
    return loss, metrics
