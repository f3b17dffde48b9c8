"""The CLIP-KL Co-Attack image step (Zhang, Yi, Sang, ACM MM 2022; METHODS.md section 5).

torchattacks has no embedding-space KL attack, so this is a torchattacks `Attack` subclass in the
shape of its PGD: maximise
    KL(softmax(e(x)) || softmax(e(x_adv))) + text_weight * KL(softmax(t_adv) || softmax(e(x_adv)))
with e = normalised CLIP image embedding, t_adv = normalised embedding of the already-perturbed
text, softmax over embedding dimensions (not classes). text_weight = 0 is the image-only KL attack
("run_trades" in the reference code). The reference code starts uniformly in [0, eps] and does
not clamp the start to [0, 1] (random_start="positive", the same); "symmetric" ([-eps, eps],
clamped) and "none" are options."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchattacks.attack import Attack

from clip_robust_ext.api import ClipxUsageError, parse_eps

RANDOM_STARTS = ("positive", "symmetric", "none")
# which perturbed caption embedding each image's Co-Attack step is pushed away from (retrieval)
CAPTION_TARGETS = ("mean-caption", "last-caption")


def caption_targets(
    text_embeddings: torch.Tensor, owner: torch.Tensor, n_images: int, how: str = "mean-caption"
) -> torch.Tensor:
    """(n_images, D) text embedding per image for the Co-Attack image step in retrieval.

    "mean-caption" (clipx): the normalised mean of the image's own perturbed captions, so one
      attack per image uses all of them.
    "last-caption" (the authors' RetrievalCLIPEval.py): their loader yields (image, caption)
      pairs, attacks each pair's image against that pair's caption and writes the image feature
      per pair, so the feature kept is the one attacked against the image's LAST caption. The
      other pairs' attacks are overwritten, so clipx runs only the kept one (the same result up to
      the random-start draw). See docs/FIDELITY.md#co-attack."""
    if how not in CAPTION_TARGETS:
        raise ClipxUsageError(f"caption_targets must be one of {CAPTION_TARGETS}, got {how!r}")
    owner = owner.to(text_embeddings.device)
    if how == "mean-caption":
        own = torch.zeros(n_images, text_embeddings.shape[1], device=text_embeddings.device)
        own.index_add_(0, owner, text_embeddings)
        return F.normalize(own, dim=-1)
    last = torch.full((n_images,), -1, dtype=torch.long, device=owner.device)
    last.scatter_reduce_(0, owner, torch.arange(len(owner), device=owner.device), "amax")
    if (last < 0).any():
        raise ClipxUsageError("caption_targets: an image has no caption")
    return text_embeddings[last]


def _kl(target_logits: torch.Tensor, adv_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(softmax(target) || adv), per sample (torch KLDivLoss(input=log q, target=p))."""
    return F.kl_div(adv_log_probs, F.softmax(target_logits, dim=-1), reduction="none").sum(-1)


class CoAttackKL(Attack):
    def __init__(
        self,
        model,
        eps=2 / 255,
        steps: int = 10,
        alpha=None,
        text_weight: float = 3.0,
        random_start: str = "positive",
    ):
        super().__init__("CoAttackKL", model)
        self.eps = parse_eps(eps)
        self.steps = int(steps)
        # reference step: 1.25 * eps / steps
        self.alpha = (
            parse_eps(alpha, name="alpha") if alpha is not None else 1.25 * self.eps / self.steps
        )
        self.text_weight = float(text_weight)
        if random_start not in RANDOM_STARTS:
            raise ClipxUsageError(
                f"random_start must be one of {RANDOM_STARTS}, got {random_start!r}"
            )
        self.random_start = random_start
        self.norm = "Linf"
        self.supported_mode = ["default"]

    def forward(
        self, images: torch.Tensor, text_embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        with torch.no_grad():
            clean = self.model.encode_image(images)
        if self.text_weight and text_embeddings is None:
            raise ClipxUsageError(
                "CoAttackKL with text_weight > 0 needs the perturbed text embeddings"
            )
        adv = images.clone()
        if self.random_start == "positive":  # as the reference: the start is not clamped, so
            adv = adv + torch.empty_like(adv).uniform_(0, self.eps)  # the first gradient is
        elif self.random_start == "symmetric":  # taken at pixels up to 1 + eps
            adv = torch.clamp(adv + torch.empty_like(adv).uniform_(-self.eps, self.eps), 0, 1)
        adv = adv.detach()
        for _ in range(self.steps):
            adv.requires_grad_(True)
            log_q = F.log_softmax(self.model.encode_image(adv), dim=-1)
            loss = _kl(clean, log_q)
            if self.text_weight:
                loss = loss + self.text_weight * _kl(text_embeddings.to(log_q), log_q)
            grad = torch.autograd.grad(loss.sum(), adv)[0]
            adv = adv.detach() + self.alpha * grad.sign()
            adv = torch.clamp(
                images + torch.clamp(adv - images, -self.eps, self.eps), 0, 1
            ).detach()
        return adv.clamp(0, 1)  # every step clamps; this only matters at steps = 0
