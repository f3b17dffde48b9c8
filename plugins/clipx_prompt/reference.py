"""APT's training attack and augmentation as the authors' code runs them (TreeLLi/APT
trainers/apt.py:421-430; configs/trainers/APT/vit_b32_ep50.yaml:13), for `pgd_update =
"reference"` and `augment = "resized-crop-flip"` on the `apt` defense (docs/FIDELITY.md#apt).

The reference keeps the perturbation delta in [-eps, eps] only and clamps the *image*
clamp(x + delta, 0, 1) at each step, so near 0 or 1 delta may point outside the box and later
steps start from it; torchattacks' PGD (the default) projects onto the box every step."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.functional import hflip


def clamped_image_pgd(
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
) -> torch.Tensor:
    """Uniform start in [-eps, eps]; per step the gradient of CE at clamp(x + delta, 0, 1),
    delta += alpha sign(grad), delta clamped to [-eps, eps] (not to the box)."""
    x = images.detach()
    delta = torch.empty_like(x).uniform_(-eps, eps)
    for _ in range(steps):
        adv = torch.clamp(x + delta, 0, 1).requires_grad_(True)
        grad = torch.autograd.grad(F.cross_entropy(logits_of(adv), labels), adv)[0]
        delta = torch.clamp(delta + alpha * grad.sign(), -eps, eps).detach()
    return torch.clamp(x + delta, 0, 1).detach()


def resized_crop_flip(images: torch.Tensor) -> torch.Tensor:
    """Dassl's "random_resized_crop" (scale 0.08-1, bicubic, back to the input size) and
    "random_flip" (p = 0.5), per image, from torch's global RNG."""
    size = tuple(images.shape[-2:])
    crop = RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=InterpolationMode.BICUBIC)
    out = []
    for img in images:
        img = crop(img).clamp(0, 1)
        out.append(hflip(img) if torch.rand(()) < 0.5 else img)
    return torch.stack(out)
