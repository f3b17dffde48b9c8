"""Text-guided attention maps (TGA-ZSR, reused by SAFT) from open_clip's ViT patch tokens.

A(x) = cos(patch token_i projected to the joint space, class text), min-max normalised per
image, on the patch grid and bilinearly upsampled to the model's input size (as in TGA-ZSR's
code, so the L2 distance has the same scale). One forward gives both the pooled embedding and
the tokens, so the fine-tuning loss does not run the image tower twice per image.
Difference from the reference code: tokens are L2-normalised over the feature dimension (cosine
per patch); the reference divides by the norm over the token dimension."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from clip_robust_ext.api import ClipxUsageError, ZeroShotClassifier

DISTANCES = ("l2", "l1", "cos")


@contextlib.contextmanager
def _tokens_on(visual: nn.Module) -> Iterator[None]:
    before = visual.output_tokens
    visual.output_tokens = True
    try:
        yield
    finally:
        visual.output_tokens = before


def features_and_tokens(
    model: ZeroShotClassifier, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) normalised image embeddings and (N, T, D) patch tokens in the joint space."""
    visual = model.clip.visual
    if not hasattr(visual, "output_tokens") or getattr(visual, "proj", None) is None:
        raise ClipxUsageError(
            f"text-guided attention needs an open_clip ViT image tower with a projection; got {type(visual).__name__}"
        )
    with _tokens_on(visual):
        pooled, tokens = visual(model.preprocess(images))
    tokens = tokens @ visual.proj
    return F.normalize(pooled.float(), dim=-1), tokens.float()


def attention_map(
    tokens: torch.Tensor, text: torch.Tensor, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """(N, T, D) tokens and (N, D) class text -> (N, H*W) maps in [0, 1], flattened."""
    sims = F.normalize(tokens, dim=-1) @ F.normalize(text, dim=-1).unsqueeze(-1)  # (N, T, 1)
    sims = sims.squeeze(-1)
    lo, hi = sims.min(1, keepdim=True)[0], sims.max(1, keepdim=True)[0]
    am = (sims - lo) / (hi - lo).clamp_min(1e-8)
    side = int(round(am.shape[1] ** 0.5))
    if side * side != am.shape[1]:
        raise ClipxUsageError(f"{am.shape[1]} patch tokens do not form a square grid")
    am = am.view(-1, 1, side, side)
    if size is not None and tuple(size) != (side, side):
        am = F.interpolate(am, size=tuple(size), mode="bilinear", align_corners=False)
    return am.flatten(1)


def attention_distance(a: torch.Tensor, b: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """Batch mean of per-image distances between flattened maps (TGA-ZSR's Distance_metric)."""
    if metric == "l2":
        return (a - b).norm(p=2, dim=1).mean()
    if metric == "l1":
        return (a - b).abs().mean()
    if metric == "cos":
        return (1 - F.cosine_similarity(a, b, dim=1, eps=1e-8)).mean()
    raise ClipxUsageError(f"attention distance must be one of {DISTANCES}, got {metric!r}")
