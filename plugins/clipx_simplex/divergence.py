"""Alignment losses D(z) between the model's scores at a point z and a target from the clean x.

Each divergence names the scores it compares (zero-shot logits or the un-normalised image
embedding), turns the clean reference scores into a fixed target, and returns one value per
sample. All are smooth (twice differentiable), which the second-order expansion needs.

- "kl" (default): KL(p_ref(x) || p_theta(z)), p = softmax of the zero-shot logits (logit scale
  included); PMG-AFT's alignment term, summed over classes, one value per sample.
- "l2-logits": ||s_theta(z) - s_ref(x)||^2 over the zero-shot logits.
- "l2-embedding": ||f_theta(z) - f_ref(x)||^2 over un-normalised image embeddings (FARE's loss).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clip_robust_ext.api import unknown_name

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Divergence:
    name: str
    scores: str  # "logits" | "embedding"
    target_fn: Callable[[torch.Tensor], torch.Tensor]  # reference scores -> fixed target
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (scores, target) -> (N,)

    def score_fn(self, model) -> ScoreFn:
        """The model's scores used by this divergence (model: a ZeroShotClassifier)."""
        if self.scores == "embedding":
            return lambda z: model.encode_image(z, normalize=False)
        return model

    def target(self, ref_scores: torch.Tensor) -> torch.Tensor:
        return self.target_fn(at_least_fp32(ref_scores.detach()))

    def __call__(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(at_least_fp32(scores), target)


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Half precisions up to fp32; fp64 (used by the exactness tests) is kept."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _kl(scores: torch.Tensor, p_ref: torch.Tensor) -> torch.Tensor:
    return (torch.xlogy(p_ref, p_ref) - p_ref * F.log_softmax(scores, dim=-1)).sum(-1)


def _sq(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((scores - target) ** 2).flatten(1).sum(-1)


DIVERGENCES: dict[str, Divergence] = {
    "kl": Divergence("kl", "logits", lambda s: F.softmax(s, dim=-1), _kl),
    "l2-logits": Divergence("l2-logits", "logits", lambda s: s, _sq),
    "l2-embedding": Divergence("l2-embedding", "embedding", lambda s: s, _sq),
}


def get_divergence(name: str) -> Divergence:
    if name not in DIVERGENCES:
        raise unknown_name("AdvSimplex divergence", name, DIVERGENCES)
    return DIVERGENCES[name]
