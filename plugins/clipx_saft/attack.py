"""The semantic-ensemble attack (SAFT): PGD against K description classifiers at once.

Maximises (1/K) sum_k CE(logit_scale * cos(f(x + delta), W_k), y), where W_k holds the k-th
description of every class. All K*C description embeddings come from one cached
ZeroShotClassifier (`DescriptionBank`), so the text tower runs once, never per step, and any
number of classes works (the reference code hard-codes Tiny-ImageNet's 200)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchattacks.attack import Attack

from clip_robust_ext.api import ClipxUsageError, ZeroShotClassifier, attack_mode, checked, parse_eps

from .descriptions import (
    DEFAULT_TEMPLATE,
    ClassDescriptions,
    DescriptionSource,
    build_class_descriptions,
)


class DescriptionBank:
    """W (K, C, D): normalised embeddings of description k of class c, cached by the core.

    A ZeroShotClassifier over the K*C single-description 'classes' shares the CLIP of `model`;
    its class_matrix() is recomputed only if the text tower's weights change."""

    def __init__(self, model: ZeroShotClassifier, descriptions: ClassDescriptions):
        if len(descriptions.descriptions) != model.num_classes:
            raise ClipxUsageError(
                f"{len(descriptions.descriptions)} classes of descriptions for a model over {model.num_classes}"
            )
        self.descriptions = descriptions
        self.k, self.num_classes = descriptions.k, model.num_classes
        self._bank = ZeroShotClassifier(
            model.loaded, classnames=None, prompts=descriptions.flat_k_major()
        )

    def weights(self) -> torch.Tensor:
        w = self._bank.class_matrix()
        return w.view(self.k, self.num_classes, w.shape[-1])

    @property
    def text_calls(self) -> int:
        return self._bank.text_calls

    def class_text(self, labels: torch.Tensor) -> torch.Tensor:
        """(N, D) ground-truth class text: the mean of its K description embeddings, renormalised."""
        return F.normalize(self.weights()[:, labels].mean(0), dim=-1)


def ensemble_logits(
    feats: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """(N, K, C) = scale * cos(image feature, description k of class c); feats normalised."""
    return scale * torch.einsum("nd,kcd->nkc", feats, weights.to(feats.dtype))


def ensemble_ce(
    logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """(1/K) sum_k CE(logits[:, k], y): SAFT's objective, for the attack and for training."""
    n, k, c = logits.shape
    ce = F.cross_entropy(logits.reshape(n * k, c), labels.repeat_interleave(k), reduction="none")
    ce = ce.view(n, k).mean(1)
    return ce.mean() if reduction == "mean" else ce


class SemanticEnsemblePGD(Attack):
    """L_inf PGD (uniform random start, sign steps, eps-ball and [0, 1] projection) on the
    description-ensemble cross-entropy. `model` is the ZeroShotClassifier under attack; only its
    image tower is differentiated. descriptions=None gives K=1 with the template, i.e. plain PGD."""

    def __init__(
        self,
        model: ZeroShotClassifier,
        eps: float = 1 / 255,
        alpha: float = 1 / 255,
        steps: int = 10,
        random_start: bool = True,
        descriptions: DescriptionSource = "auto",
        k: int = 5,
        filter: str = "name-similarity",
        template: str = DEFAULT_TEMPLATE,
        class_descriptions: ClassDescriptions | None = None,
    ):
        if not isinstance(model, ZeroShotClassifier):
            raise ClipxUsageError(
                "semantic-ensemble attacks a ZeroShotClassifier (it needs the CLIP text tower)"
            )
        super().__init__("SemanticEnsemblePGD", model)
        self.eps = parse_eps(eps, name="eps", max_value=1.0)
        self.alpha = parse_eps(alpha, name="alpha", max_value=1.0)
        if not isinstance(steps, int) or steps < 0:
            raise ClipxUsageError(f"steps must be a non-negative integer, got {steps!r}")
        self.steps, self.random_start, self.norm = steps, bool(random_start), "Linf"
        self.supported_mode = ["default", "targeted"]
        if class_descriptions is None:
            class_descriptions = build_class_descriptions(
                model.classnames, descriptions, k=k, filter=filter, template=template, model=model
            )
        self.class_descriptions = class_descriptions
        self.bank = DescriptionBank(model, class_descriptions)

    @property
    def info(self) -> dict[str, Any]:
        return {"attack": "semantic-ensemble", **self.class_descriptions.info()}

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        feats = self.model.encode_image(images)
        logits = ensemble_logits(feats, self.bank.weights(), self.model.logit_scale())
        return ensemble_ce(logits, labels)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach().to(self.device).float()
        labels = labels.clone().detach().to(self.device)
        with attack_mode(self.model), torch.autocast(images.device.type, enabled=False):
            self.bank.weights()  # encode the descriptions once, outside the step loop
            target = self.get_target_label(images, labels) if self.targeted else labels
            adv = images.clone()
            if self.random_start:
                adv = (adv + torch.empty_like(adv).uniform_(-self.eps, self.eps)).clamp(0, 1)
            for _ in range(self.steps):
                adv.requires_grad_(True)
                cost = self.loss(adv, target)
                if self.targeted:
                    cost = -cost
                grad = torch.autograd.grad(cost, adv)[0]
                adv = adv.detach() + self.alpha * grad.sign()
                delta = torch.clamp(adv - images, -self.eps, self.eps)
                adv = torch.clamp(images + delta, 0, 1).detach()
        return adv


# Registry factory: eps, alpha, steps, random_start, descriptions, k, filter, template (a
# ready ClassDescriptions object is for Python callers only)
semantic_ensemble = checked(
    SemanticEnsemblePGD, "attack 'semantic-ensemble'", hidden=("class_descriptions",)
)
