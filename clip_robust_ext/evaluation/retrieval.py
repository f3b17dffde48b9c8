"""Image-text retrieval: R@K both ways, clean and under attack, with attack success rates.

The Co-Attack paper reports attack success rate, not adversarial recall (Co-Attack issues #3/#4);
both are written, with their formulas, into every record."""

from __future__ import annotations

from collections.abc import Sequence

import torch

RETRIEVAL_FORMULAS = {
    "TR@K": "image->text recall: % of images with at least one of their own captions in the top K texts",
    "IR@K": "text->image recall: % of captions whose own image is in the top K images",
    "ASR_TR@K": "attack success rate = clean TR@K - adversarial TR@K (percentage points)",
    "ASR_IR@K": "attack success rate = clean IR@K - adversarial IR@K (percentage points)",
}


def recall_hits(
    sim: torch.Tensor, text_owner: torch.Tensor, ks: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Per-query hits. sim: (M images, T texts) similarities; text_owner: (T,) image index of each text.

    Ties are broken against the query (a tied wrong item ranks first), so recall is never flattered."""
    m, t = sim.shape
    owner = text_owner.to(sim.device)
    own = owner.view(1, t) == torch.arange(m, device=sim.device).view(m, 1)  # (M, T) ownership
    # rank of the best own caption for each image: number of non-own texts scoring >= it
    best_own = sim.masked_fill(~own, float("-inf")).max(dim=1).values
    i2t_rank = ((sim >= best_own.view(m, 1)) & ~own).sum(dim=1)
    # rank of the own image for each text: number of other images scoring >= it
    own_score = sim[owner, torch.arange(t, device=sim.device)]
    other = torch.ones(m, t, dtype=torch.bool, device=sim.device)
    other[owner, torch.arange(t, device=sim.device)] = False
    t2i_rank = ((sim >= own_score.view(1, t)) & other).sum(dim=0)
    out = {}
    for k in ks:
        out[f"TR@{k}"] = i2t_rank < k
        out[f"IR@{k}"] = t2i_rank < k
    return out


def recall_at_k(
    sim: torch.Tensor, text_owner: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """R@K in percent for one gallery."""
    return {k: 100.0 * v.float().mean().item() for k, v in recall_hits(sim, text_owner, ks).items()}


def attack_success(clean: dict[str, float], adv: dict[str, float]) -> dict[str, float]:
    """Attack success rate per recall key: clean R@K minus adversarial R@K, in points."""
    return {f"ASR_{k}": clean[k] - adv[k] for k in clean if k in adv}


def retrieval_table(records: list[dict]) -> str:
    """Markdown: one row per (model, attack): adversarial recall and attack success rate."""
    ks = sorted(
        {k for r in records for k in r["recall"]}, key=lambda s: (s[:2], int(s.split("@")[1]))
    )
    head = ["model", "attack", "eps"] + ks + [f"ASR {k}" for k in ks if not k.startswith("ASR")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        cells = [r["label"], r["attack"], r["eps_str"] if r["eps"] is not None else "-"]
        cells += [f"{r['recall'][k]:.2f}" for k in ks] + [
            f"{r['asr'].get('ASR_' + k, 0.0):.2f}" for k in ks
        ]
        lines.append("| " + " | ".join(cells) + " |")
    first = records[0]
    return (
        f"### {first['protocol']}\n\n{first['n_images']} images, {first['n_texts']} captions "
        f"({first['dataset']}); recall in percent; ASR = clean R@K - adversarial R@K\n\n"
        + "\n".join(lines)
        + "\n"
    )
