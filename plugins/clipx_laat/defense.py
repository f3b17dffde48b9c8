"""LAAT's CLIP mode: fine-tune the CLIP image tower against frozen, expanded text anchors.

A transplant (the paper trains a separate backbone from scratch, see paper.py): the anchors are
the training classes' CLIP text embeddings (text tower frozen), expanded by the map fitted on
those classes; the image tower h is trained with ACE(x_adv) + beta * (-cos(h(x), h(x_adv))), the
PGD examples maximising the CE of the anchor head cos(h(x), a_c) / tau (as the reference attacks
its own cosine head). Evaluation then uses the ordinary zero-shot protocols, i.e. raw text
embeddings of the test classes as the head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clip_robust_ext.api import (
    Batch,
    ClipxUsageError,
    Defense,
    TrainContext,
    ZeroShotClassifier,
    build_prompts,
    format_eps,
    parse_eps,
    verify_adversarial,
)

from .expansion import apply_expansion, fit_expansion, mean_pairwise_cosine
from .losses import cosine_logits, laat_loss


class AnchorHead(nn.Module):
    """CLIP image tower + fixed anchors: logits = cos(h(x), a_c) / tau. Shares ctx.model's CLIP, so
    attacks on it see the weights being trained (torchattacks takes it as is)."""

    def __init__(self, model: ZeroShotClassifier, anchors: torch.Tensor, tau: float):
        super().__init__()
        self.model = model
        self.tau = float(tau)
        self.register_buffer("anchors", anchors.detach().float().clone(), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return cosine_logits(
            self.model.encode_image(images, normalize=False), self.anchors, self.tau
        )


class LAAT(Defense):
    """LAAT CLIP mode (Li et al., CVPR 2024, transplanted): ACE over cos(h(x_adv), a_c) / tau with
    expanded CLIP text anchors + beta * cosine smoothing; image tower only."""

    name = "laat"
    trainable = "visual"
    train_defaults = {"optimizer": "sgd", "momentum": 0.9, "lr": 1e-5, "weight_decay": 0.0}

    def __init__(
        self,
        eps: float | str = "1/255",
        alpha: float | str = "1/255",
        steps: int = 2,
        tau: float = 1.0,
        beta: float = 1.0,
        expand: bool = True,
    ):
        self.eps = parse_eps(eps, name="eps")
        self.alpha = parse_eps(alpha, name="alpha")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ClipxUsageError(f"laat: steps must be a positive integer, got {steps!r}")
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or tau <= 0:
            raise ClipxUsageError(f"laat: tau must be a positive number, got {tau!r}")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0:
            raise ClipxUsageError(f"laat: beta must be a non-negative number, got {beta!r}")
        if not isinstance(expand, bool):
            raise ClipxUsageError(f"laat: expand must be true or false, got {expand!r}")
        self.steps, self.tau, self.beta, self.expand = steps, float(tau), float(beta), expand
        self._head: AnchorHead | None = None
        self._stats: dict[str, float] = {}

    def setup(self, ctx: TrainContext) -> None:
        """Anchors from the (frozen) text tower for the training classes; expansion fitted on them."""
        with torch.no_grad():
            raw = ctx.model.text_matrix(build_prompts(ctx.classnames, ctx.templates)).float()
        anchors = raw
        self._stats = {"anchor_cos_raw": mean_pairwise_cosine(raw)} if len(raw) > 1 else {}
        if self.expand:
            if len(raw) < 2:
                raise ClipxUsageError("laat: anchor expansion needs at least 2 training classes")
            exp = fit_expansion(raw)
            anchors = apply_expansion(raw, exp)
            self._stats["anchor_cos_expanded"] = mean_pairwise_cosine(anchors)
            self._stats["theta_max_deg"] = exp.to_dict()["theta_max_deg"]
        self._head = AnchorHead(ctx.model, anchors.to(ctx.device), self.tau)

    @property
    def anchors(self) -> torch.Tensor:
        if self._head is None:
            raise ClipxUsageError("laat: setup(ctx) has not run")
        return self._head.anchors

    def loss(self, batch: Batch, ctx: TrainContext) -> tuple[torch.Tensor, dict[str, float]]:
        if self._head is None or self._head.model is not ctx.model:
            self.setup(ctx)
        attack = ctx.attack(
            "pgd",
            model=self._head,
            eps=self.eps,
            alpha=self.alpha,
            steps=self.steps,
            random_start=True,
        )
        x_adv = attack(batch.images, batch.labels).images
        verify_adversarial(batch.images, x_adv, self.eps, "Linf", "laat/pgd")
        feat_adv = ctx.model.encode_image(x_adv, normalize=False)
        feat_clean = (
            ctx.model.encode_image(batch.images, normalize=False) if self.beta else feat_adv
        )
        loss, metrics = laat_loss(
            feat_clean, feat_adv, self.anchors, batch.labels, self.tau, self.beta
        )
        if ctx.step == 0:
            metrics.update(self._stats)
        return loss, metrics

    def config(self) -> dict[str, Any]:
        return {
            "eps": format_eps(self.eps),
            "alpha": format_eps(self.alpha),
            "steps": self.steps,
            "tau": self.tau,
            "beta": self.beta,
            "expand": self.expand,
        }
