"""BASELINES FOR COMPARISON ONLY - this is NOT how clipx computes zero-shot logits.

The TeCoA-lineage attack code (TeCoA, PMG-AFT, TGA-ZSR, ... `attack_pgd` / `pgd_CLIP` calling
`multiGPU_CLIP(model_image, model_text, model, images, text_tokens)`) tokenises the class
prompts once, then re-encodes all C x T prompts through the text tower inside every forward of
the attack loop. `ZeroShotClassifier` computes the class-text matrix once and caches it.

Two variants are modelled, and the benchmark says which one each figure uses:

* `NaiveReencodeClassifier` attacked through clipx's torchattacks adapter ("naive, frozen
  text"): the prompts are encoded *under the graph* (grad mode on, no `torch.no_grad`), but the
  adapter freezes every parameter while attacking, so autograd records nothing for the text
  tower: each step costs one image forward+backward plus one text *forward* of C x T prompts.
* `tecoa_lineage_pgd` on a model whose text tower still requires grad ("naive, text under the
  graph"): the attack loop calls `loss.backward()` and the text parameters were never frozen,
  so each step also stores the text activations and backpropagates into the text weights:
  one image forward+backward plus one text forward+backward of C x T prompts (and the memory
  of C x T text activations).
Both compute exactly the logits of `ZeroShotClassifier` (same ops in the same order), so a
seeded attack gives the same adversarial examples as the cached classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clip_robust_ext.models import ZeroShotClassifier


class NaiveReencodeClassifier(nn.Module):
    """Zero-shot logits that re-encode every class prompt in every forward (baseline only)."""

    def __init__(self, zs: ZeroShotClassifier):
        super().__init__()
        self.zs = zs  # shares the CLIP, tokenizer and pixel statistics (no second copy)
        flat = [t for p in zs.prompts for t in p]
        counts = {len(p) for p in zs.prompts}
        if len(counts) != 1:
            raise ValueError("the naive baseline expects the same number of prompts per class")
        self.per_class = counts.pop()
        self.n_classes = len(zs.prompts)
        # tokenised once, like the TeCoA-lineage code (text_tokens is built outside the loop)
        self.register_buffer("tokens", zs.tokenize(flat), persistent=False)

    def class_matrix(self) -> torch.Tensor:
        """ZeroShotClassifier.text_matrix's arithmetic, recomputed, without torch.no_grad."""
        feats = self.zs.encode_text(self.tokens)  # batches of 1024, fp32, normalised
        feats = feats.view(self.n_classes, self.per_class, -1).mean(1)
        return F.normalize(feats, dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.zs.encode_image(images)
        return self.zs.logit_scale() * feats @ self.class_matrix().t()


def tecoa_lineage_pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
) -> torch.Tensor:
    """PGD as the TeCoA-lineage loops write it: `loss.backward()` and read the input's `.grad`,
    with whatever parameters still require grad getting gradients too (baseline only).

    The arithmetic (uniform random start, sign step, projection, clamp) and the order of random
    draws are torchattacks.PGD's, so with the same seed the adversarial examples are the same."""
    images = images.clone().detach()
    labels = labels.clone().detach()
    loss_fn = nn.CrossEntropyLoss()
    adv = images.clone().detach()
    adv = adv + torch.empty_like(adv).uniform_(-eps, eps)
    adv = torch.clamp(adv, min=0, max=1).detach()
    for _ in range(steps):
        adv.requires_grad = True
        loss = loss_fn(model(adv), labels)
        loss.backward()  # also into every parameter that requires grad (the text tower here)
        grad = adv.grad
        adv = adv.detach() + alpha * grad.sign()
        delta = torch.clamp(adv - images, min=-eps, max=eps)
        adv = torch.clamp(images + delta, min=0, max=1).detach()
    return adv
