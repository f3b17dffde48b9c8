"""SGA's image step (Lu et al., ICCV 2023; github.com/Zoky-2020/SGA, ImageAttacker).

torchattacks has no set-guided attack, so this is a torchattacks `Attack` subclass in the shape of
its PGD. Each step scores the adversarial image AND resized, noised copies of it (the scale set)
against the image's own captions (the caption set) and steps to lower the summed cosine:
    minimise  sum_{s in {1} + scales} mean_i sum_{t owned by i} cos(e(g_s(x'_i)), e(t))
g_s: add N(0, noise_std) noise, resize to s x the side (bicubic), clamp to [0, 1], resize back.
The defaults are the authors' CLIP setting: eps 2/255, 10 steps of 0.5/255 (alpha = eps / 4), scales
0.5, 0.75, 1.25, 1.5, noise std 0.05, a uniform start in [-eps, eps]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchattacks.attack import Attack
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2.functional import resize

from clip_robust_ext.api import ClipxUsageError, parse_eps

SCALES = (0.5, 0.75, 1.25, 1.5)
BICUBIC = InterpolationMode.BICUBIC


class SGAImageStep(Attack):
    def __init__(
        self,
        model,
        eps=2 / 255,
        steps: int = 10,
        alpha=None,
        scales: Sequence[float] = SCALES,
        noise_std: float = 0.05,
    ):
        super().__init__("SGAImageStep", model)
        self.eps = parse_eps(eps)
        self.steps = int(steps)
        # the authors' 0.5/255 at eps 2/255, kept in proportion at other eps
        self.alpha = parse_eps(alpha, name="alpha") if alpha is not None else self.eps / 4
        self.scales = tuple(float(s) for s in scales)
        if any(s <= 0 for s in self.scales):
            raise ClipxUsageError(f"SGA scales must be positive, got {list(self.scales)}")
        self.noise_std = float(noise_std)
        self.norm = "Linf"
        self.supported_mode = ["default"]

    def scaled_copies(self, images: torch.Tensor) -> torch.Tensor:
        """(1 + len(scales)) * M images: the originals, then one noised, rescaled copy per scale."""
        side = list(images.shape[-2:])
        out = [images]
        for s in self.scales:
            noisy = images + self.noise_std * torch.randn_like(images)
            small = resize(
                noisy, [int(s * side[0]), int(s * side[1])], interpolation=BICUBIC, antialias=False
            )
            out.append(resize(small.clamp(0, 1), side, interpolation=BICUBIC, antialias=False))
        return torch.cat(out)

    def forward(
        self, images: torch.Tensor, text_embeddings: torch.Tensor, text_owner: torch.Tensor
    ) -> torch.Tensor:
        """text_embeddings: (T, D) normalised caption-set embeddings; text_owner: (T,) image index."""
        images = images.clone().detach().to(self.device)
        texts = text_embeddings.detach().to(self.device)
        m = len(images)
        own = (
            text_owner.to(self.device).view(1, -1)
            == torch.arange(m, device=self.device).view(-1, 1)
        ).float()
        adv = images + torch.empty_like(images).uniform_(-self.eps, self.eps)
        adv = adv.clamp(0, 1).detach()
        n_copies = 1 + len(self.scales)
        for _ in range(self.steps):
            adv.requires_grad_(True)
            emb = self.model.encode_image(self.scaled_copies(adv))
            sim = (emb @ texts.t()).view(n_copies, m, -1)
            loss = (sim * own).sum(-1).mean(-1).sum()  # the set-level similarity, to be lowered
            grad = torch.autograd.grad(loss, adv)[0]
            adv = adv.detach() - self.alpha * grad.sign()
            adv = torch.clamp(
                images + torch.clamp(adv - images, -self.eps, self.eps), 0, 1
            ).detach()
        return adv
