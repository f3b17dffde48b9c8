"""FARE's inner maximisation as a torchattacks Attack.

torchattacks attacks maximise a classification loss over logits; FARE's inner max is the squared
L2 distance between the *embedding* of the perturbed image and the frozen model's embedding of
the clean image (no labels, no logits), which no torchattacks attack computes. Subclassing
torchattacks.Attack keeps the library's conventions (model-mode handling, [0, 1] inputs, the
same PGD update as torchattacks.PGD) and lets any torchattacks tooling call it."""

from __future__ import annotations

import math

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


def apgd_checkpoints(steps: int) -> list[int]:
    """APGD's step-size checkpoints w_j = ceil(p_j * steps) (Croce & Hein, 2020):
    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), while p_j <= 1."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(round(q * steps, 6)) for q in p})


def apgd_maximise(loss_fn, images: torch.Tensor, eps: float, steps: int, random_start: bool = True):
    """L_inf APGD (Croce & Hein, 2020) maximising a per-sample loss, written from the paper:
    step size 2 eps, momentum 0.75, and at each checkpoint a sample whose loss rose in fewer than
    75% of the steps since the last one, or whose step size and best loss did not change, halves
    its step and restarts from its best point. Returns the best point found per sample."""
    x = images.detach()
    n = x.shape[0]
    view = (n,) + (1,) * (x.dim() - 1)

    def project(z: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x + torch.clamp(z - x, -eps, eps), 0, 1)

    def loss_and_grad(z: torch.Tensor):
        z = z.clone().requires_grad_(True)
        loss = loss_fn(z)
        return loss.detach(), torch.autograd.grad(loss.sum(), z)[0].detach()

    adv = project(x + torch.empty_like(x).uniform_(-eps, eps)) if random_start else x.clone()
    step = torch.full(view, 2 * eps, device=x.device)
    loss, grad = loss_and_grad(adv)
    best, best_loss = adv.clone(), loss.clone()
    prev = adv.clone()
    checkpoints = set(apgd_checkpoints(steps)[1:])
    last_check, rises = 0, torch.zeros(n, device=x.device)
    step_at_check, best_at_check = step.clone(), best_loss.clone()
    for k in range(steps):
        z = project(adv + step * grad.sign())
        momentum = 0.75 if k > 0 else 1.0  # the first step is a plain projected step
        new = project(adv + momentum * (z - adv) + (1 - momentum) * (adv - prev))
        new_loss, new_grad = loss_and_grad(new)
        rises += (new_loss > loss).float()
        improved = new_loss > best_loss
        best[improved], best_loss[improved] = new[improved], new_loss[improved]
        prev, adv, loss, grad = adv, new, new_loss, new_grad
        if k + 1 in checkpoints:
            span = k + 1 - last_check
            stalled = (rises < 0.75 * span) | (
                (step.flatten() == step_at_check.flatten()) & (best_loss == best_at_check)
            )
            step[stalled] /= 2
            adv[stalled] = best[stalled]
            if stalled.any():  # the loss is per batch (targets are per sample): whole batch
                loss, grad = loss_and_grad(adv)
            last_check, rises = k + 1, torch.zeros(n, device=x.device)
            step_at_check, best_at_check = step.clone(), best_loss.clone()
    return best.detach()


class EmbeddingAPGD(EmbeddingPGD):
    """FARE's inner maximisation with APGD (RobustVLM's argparse default `--attack apgd`; its
    README commands for the released checkpoints use PGD): same loss, same ball, APGD steps."""

    def __init__(self, model, eps: float = 4 / 255, steps: int = 10, random_start: bool = True):
        super().__init__(model, eps=eps, alpha=0.0, steps=steps, random_start=random_start)
        self.attack = "EmbeddingAPGD"

    def forward(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        target = target.clone().detach().to(self.device)

        def loss(z: torch.Tensor) -> torch.Tensor:
            return embedding_l2(self.model.encode_image(z, normalize=False), target)

        return apgd_maximise(loss, images, self.eps, self.steps, self.random_start)
