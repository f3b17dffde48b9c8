"""FARE's inner maximisation as a torchattacks Attack.

torchattacks attacks maximise a classification loss over logits; FARE's inner max is the squared
L2 distance between the *embedding* of the perturbed image and the frozen model's embedding of
the clean image (no labels, no logits), which no torchattacks attack computes. Subclassing
torchattacks.Attack keeps the library's conventions (model-mode handling, [0, 1] inputs, the
same PGD update as torchattacks.PGD) and lets any torchattacks tooling call it."""

from __future__ import annotations

import torch
from torchattacks.attack import Attack


def embedding_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample squared L2 distance (FARE's l2 with reduction 'none')."""
    return ((a - b) ** 2).sum(dim=1)


class EmbeddingPGD(Attack):
    """L_inf PGD maximising ||f(x_adv) - target||_2^2 on un-normalised image embeddings.

    model: a ZeroShotClassifier (its encode_image(x, normalize=False) is f).
    Call as attack(images, target_embeddings); uniform random start in [-eps, eps] (FARE's
    pgd_train.py), sign-gradient steps of alpha, projection onto the ball and [0, 1]."""

    def __init__(
        self,
        model,
        eps: float = 4 / 255,
        alpha: float = 1 / 255,
        steps: int = 10,
        random_start: bool = True,
    ):
        super().__init__("EmbeddingPGD", model)
        self.eps, self.alpha, self.steps, self.random_start = eps, alpha, steps, random_start
        self.norm = "Linf"
        self.supported_mode = ["default"]

    def forward(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        target = target.clone().detach().to(self.device)
        adv = images.clone().detach()
        if self.random_start:
            adv = (adv + torch.empty_like(adv).uniform_(-self.eps, self.eps)).clamp(0, 1).detach()
        for _ in range(self.steps):
            adv.requires_grad_(True)
            cost = embedding_l2(self.model.encode_image(adv, normalize=False), target).mean()
            grad = torch.autograd.grad(cost, adv)[0]
            adv = adv.detach() + self.alpha * grad.sign()
            delta = torch.clamp(adv - images, min=-self.eps, max=self.eps)
            adv = torch.clamp(images + delta, min=0, max=1).detach()
        return adv
