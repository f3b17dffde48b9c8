"""The PGD trajectory whose consecutive vertices span AdvSimplex's triangles.

TrajectoryPGD is torchattacks.PGD (same random start, sign step, projections, RNG use) that also
keeps its iterates: vertices[0] = x + delta_0 (the random start, or x itself without one), ...,
vertices[T] = x + delta_T, the PGD-T adversarial example TeCoA trains on."""

from __future__ import annotations

import torch
import torchattacks
from torch import nn

from clip_robust_ext.api import attack_mode, verify_adversarial


class TrajectoryPGD(torchattacks.PGD):
    """torchattacks.PGD recording its iterates in `self.vertices` ((T+1, N, C, H, W))."""

    def __init__(self, model, eps=1 / 255, alpha=1 / 255, steps=3, random_start=True):
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)
        self.vertices: torch.Tensor | None = None

    def forward(self, images, labels):
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        loss = nn.CrossEntropyLoss()
        adv_images = images.clone().detach()
        if self.random_start:
            adv_images = adv_images + torch.empty_like(adv_images).uniform_(-self.eps, self.eps)
            adv_images = torch.clamp(adv_images, min=0, max=1).detach()
        vertices = [adv_images.detach()]  # detach: requires_grad is set in place below
        for _ in range(self.steps):
            adv_images.requires_grad = True
            cost = loss(self.get_logits(adv_images), labels)
            grad = torch.autograd.grad(cost, adv_images, retain_graph=False, create_graph=False)[0]
            adv_images = adv_images.detach() + self.alpha * grad.sign()
            delta = torch.clamp(adv_images - images, min=-self.eps, max=self.eps)
            adv_images = torch.clamp(images + delta, min=0, max=1).detach()
            vertices.append(adv_images.detach())
        self.vertices = torch.stack(vertices)
        return adv_images


def pgd_trajectory(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool = True,
) -> torch.Tensor:
    """(T+1, N, C, H, W) PGD vertices; fp32, eval mode, frozen weights; every vertex verified."""
    attack = TrajectoryPGD(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)
    with attack_mode(model), torch.autocast(images.device.type, enabled=False):
        attack(images.float(), labels)
    vertices = attack.vertices
    for k, v in enumerate(vertices):
        verify_adversarial(images.float(), v, eps, "Linf", f"advsimplex/pgd-trajectory vertex {k}")
    return vertices
