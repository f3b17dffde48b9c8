"""Gaussian noise augmentation (Cohen, Rosenfeld and Kolter, 2019, section 4): the base
classifier of randomized smoothing is only as good as its accuracy under the smoothing noise, so
fine-tune it on x + N(0, sigma^2 I) with the zero-shot CE loss, sigma matched to certification
(the `certify` protocol's sigma). Noise is added in [0, 1] pixel space and not clipped, exactly
as the certificate draws it."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from clip_robust_ext.api import Batch, ClipxUsageError, Defense, TrainContext


class GaussianAug(Defense):
    """Gaussian noise augmentation: CE of the zero-shot logits on x + N(0, sigma^2) (fixed class
    prompts), vision tower only, TeCoA's optimiser; the base model for randomized smoothing."""

    name = "gaussian-aug"
    trainable = "visual"
    train_defaults = {"optimizer": "sgd", "momentum": 0.9, "lr": 1e-5, "weight_decay": 0.0}

    def __init__(self, sigma: float = 0.25):
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
            raise ClipxUsageError(f"{self.name}: sigma must be a number > 0, got {sigma!r}")
        self.sigma = float(sigma)

    def loss(self, batch: Batch, ctx: TrainContext):
        noisy = batch.images + self.sigma * torch.randn_like(batch.images)
        logits = ctx.model(noisy)
        accuracy = (logits.argmax(1) == batch.labels).float().mean().detach()
        return F.cross_entropy(logits, batch.labels), {"noisy_acc": accuracy}

    def config(self) -> dict[str, Any]:
        return {"sigma": self.sigma}
