"""Loss pieces shared by defenses and pre-training."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import distributed as D


def clip_contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    labels: torch.Tensor | None = None,
    gather: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE over image/caption pairs (CLIP's loss).

    Features must be L2-normalised. With `labels`, targets are class-aware: every caption of the
    image's class in the batch is a positive, with equal weight (soft targets), as used to train
    clipx-small-c10 - with few classes, plain InfoNCE would push apart same-class pairs.
    Under torchrun the batch is gathered from all ranks with gradients (gather=True), so the
    loss is the single-process loss of the global batch."""
    if gather:
        image_features = D.gather_with_grad(image_features)
        text_features = D.gather_with_grad(text_features)
        if labels is not None:
            labels = D.gather_tensor(labels)
    logits = logit_scale * image_features @ text_features.t()
    if labels is None:
        targets = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))
    same = (labels.view(-1, 1) == labels.view(1, -1)).float()
    targets = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))
