"""SGA on a caption gallery: image-guided text attack, set-guided image step, final text attack.

The three stages of the authors' SGAttacker.attack:
1. each caption is attacked (one word, the toolkit's greedy word-swap text attack) to move AWAY
   from its own CLEAN image: goal "image-guided", anchors = clean image embeddings;
2. the image step (image.py) pushes every scaled copy of each image away from its caption set:
   the stage-1 adversarial captions (the authors' code), or those plus the originals
   (caption_set = "adversarial+original");
3. the captions are attacked again from the originals, now guided by the ADVERSARIAL images.
Returns the adversarial images (checked against the eps ball) and the stage-3 captions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from clip_robust_ext.api import (
    CLIPTextAttacker,
    ClipxUsageError,
    RetrievalAttackOutput,
    attack_mode,
    config_from_params,
    verify_adversarial,
)

from .guide import bert_tokenizer, truncate_like_reference
from .image import SCALES, SGAImageStep

CAPTION_SETS = ("adversarial", "adversarial+original")


class SGA:
    """Set-level Guidance Attack for image-text retrieval (modality "retrieval").

    eps / steps / alpha / scales / noise_std: the image step (authors' CLIP setting by default);
    caption_set: the captions guiding the image step (see the module docstring);
    text_attack: the toolkit's text-attack settings (TextAttackConfig fields; the goal is always
    "image-guided"); seed: the text attack's seed (the image step uses torch's global RNG, which
    the protocol seeds); guide_max_tokens: None, or the reference's 30: the guidance captions
    round-tripped through the masked LM's BERT tokenizer and cut to that many tokens (guide.py)."""

    norm = "Linf"

    def __init__(
        self,
        model,
        eps="2/255",
        steps: int = 10,
        alpha=None,
        scales: Sequence[float] = SCALES,
        noise_std: float = 0.05,
        caption_set: str = "adversarial",
        text_attack: dict[str, Any] | None = None,
        seed: int = 0,
        guide_max_tokens: int | None = None,
    ):
        if caption_set not in CAPTION_SETS:
            raise ClipxUsageError(f"caption_set must be one of {CAPTION_SETS}, got {caption_set!r}")
        params = dict(text_attack or {"transformation": "wordnet"})
        if params.pop("goal", "image-guided") != "image-guided":
            raise ClipxUsageError(
                "SGA's text attack is image-guided; text_attack.goal cannot be set"
            )
        params.setdefault("seed", seed)
        self.model = model
        self.caption_set = caption_set
        self.image_step = SGAImageStep(
            model, eps=eps, steps=steps, alpha=alpha, scales=scales, noise_std=noise_std
        )
        self.eps = self.image_step.eps
        config, mlm, tok = config_from_params(goal="image-guided", **params)
        self.guide_max_tokens = guide_max_tokens
        self.guide_tokenizer = None
        if guide_max_tokens is not None:
            if not isinstance(guide_max_tokens, int) or guide_max_tokens < 3:
                raise ClipxUsageError(
                    f"sga: guide_max_tokens must be an integer >= 3 or unset, got {guide_max_tokens!r}"
                )
            masked_lm = mlm if mlm is not None else config.masked_lm
            self.guide_tokenizer = bert_tokenizer(masked_lm, tok)
        # one attacker for both text stages (the masked LM loads once); its anchors change
        self.text = CLIPTextAttacker(model, config, masked_lm=mlm, tokenizer=tok)

    def _guided_texts(self, texts: list[str], owner: torch.Tensor, images: torch.Tensor):
        with torch.no_grad():
            self.text.anchors = self.model.encode_image(images)
        return self.text.attack_texts(texts, owner.tolist())

    def __call__(
        self, images: torch.Tensor, texts: Sequence[str], text_owner: torch.Tensor
    ) -> RetrievalAttackOutput:
        texts = list(texts)
        images = images.to(self.model.device)
        with attack_mode(self.model):
            first = self._guided_texts(texts, text_owner, images)
            guide = [r.perturbed for r in first]
            if self.guide_tokenizer is not None:  # the reference's 30-token round trip (guide.py)
                guide = truncate_like_reference(guide, self.guide_tokenizer, self.guide_max_tokens)
            owner = text_owner
            if self.caption_set == "adversarial+original":
                guide, owner = guide + texts, torch.cat([text_owner, text_owner])
            with torch.no_grad():
                guide_emb = self.model.encode_text(guide)
            adv = self.image_step(images, guide_emb, owner)
            verify_adversarial(images, adv, self.eps, "Linf", "sga")
            final = self._guided_texts(texts, text_owner, adv)
        return RetrievalAttackOutput(
            images=adv,
            texts=[r.perturbed for r in final],
            info={
                "perturbed_first": sum(r.status == "perturbed" for r in first),
                "perturbed": sum(r.status == "perturbed" for r in final),
                "total": len(final),
            },
        )
