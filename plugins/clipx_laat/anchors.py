"""Language-driven anchors: frozen, normalised CLIP text embeddings of the class prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from clip_robust_ext.api import ClipxUsageError, LoadedCLIP, ZeroShotClassifier, build_prompts

from .expansion import Expansion, apply_expansion, fit_expansion, mean_pairwise_cosine

LAAT_TEMPLATES: tuple[str, ...] = ("This is a photo of a {}",)  # the reference's --prompt default


def text_anchors(
    clip: LoadedCLIP | ZeroShotClassifier,
    classnames: Sequence[str],
    templates: Sequence[str] = LAAT_TEMPLATES,
) -> torch.Tensor:
    """(C, D) unit text embeddings (mean over templates, renormalised), computed without grad."""
    zs = (
        clip
        if isinstance(clip, ZeroShotClassifier)
        else ZeroShotClassifier(clip, classnames, templates)
    )
    with torch.no_grad():
        return zs.text_matrix(build_prompts(classnames, templates)).detach().float().cpu()


@dataclass
class AnchorSet:
    """Anchors for the training (seen) and test (novel) classes, raw or expanded."""

    seen: torch.Tensor  # (C_seen, D)
    novel: torch.Tensor | None  # (C_novel, D) or None
    expansion: Expansion | None  # None = raw CLIP anchors ('cos-clip' head)

    def stats(self) -> dict[str, float]:
        out = {"seen_mean_pairwise_cos": mean_pairwise_cosine(self.seen)}
        if self.novel is not None and self.novel.shape[0] > 1:
            out["novel_mean_pairwise_cos"] = mean_pairwise_cosine(self.novel)
        if self.novel is not None:
            both = torch.cat([self.seen, self.novel])
            out["all_mean_pairwise_cos"] = mean_pairwise_cosine(both)
        if self.expansion is not None:
            out["theta_max_deg"] = self.expansion.to_dict()["theta_max_deg"]
        return out


def build_anchor_set(seen: torch.Tensor, novel: torch.Tensor | None, expand: bool) -> AnchorSet:
    """Raw anchors, or anchors expanded by a map fitted on the seen classes only."""
    if seen.ndim != 2:
        raise ClipxUsageError(f"seen anchors must be (C, D), got {tuple(seen.shape)}")
    if not expand:
        return AnchorSet(seen=seen, novel=novel, expansion=None)
    exp = fit_expansion(seen)
    return AnchorSet(
        seen=apply_expansion(seen, exp),
        novel=apply_expansion(novel, exp) if novel is not None else None,
        expansion=exp,
    )
