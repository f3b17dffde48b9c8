"""Factories of the registered text and multimodal attacks (TextAttack loads on first use).

Both are `checked` factories: their signature lists every text-attack parameter, so recipes
check parameter names and types before any work starts."""

from __future__ import annotations

import inspect
from typing import Any, Literal

from clip_robust_ext.api import ZeroShotClassifier, checked, text_attack_parameters

_KW = inspect.Parameter.KEYWORD_ONLY


def _text_attack(model: ZeroShotClassifier, **params: Any):
    """text-attack(model, transformation="bert-mlm", goal="kl", max_words=1, max_candidates=10,
    masked_lm="bert-base-uncased", min_confidence=0.3, target="prompts", anchors="text", seed=0)."""
    from clip_robust_ext.api import TextAttackOnPrompts

    return TextAttackOnPrompts(model, **params)


def _multimodal(model: ZeroShotClassifier, **params: Any):
    """multimodal(model, eps="1/255", alpha="1/255", steps=10, image_attack="pgd",
    image_target="perturbed-prompts" | "clean-prompts" (MMCoA's test.py), **text-attack params)."""
    from clip_robust_ext.api import MultimodalAttack

    return MultimodalAttack(model, **params)


text_attack = checked(_text_attack, "attack 'text-attack'", extra=text_attack_parameters())
multimodal = checked(
    _multimodal,
    "attack 'multimodal'",
    extra=[
        inspect.Parameter("eps", _KW, default="1/255", annotation=float | str),
        inspect.Parameter("alpha", _KW, default="1/255", annotation=float | str),
        inspect.Parameter("steps", _KW, default=10, annotation=int),
        inspect.Parameter("image_attack", _KW, default="pgd", annotation=str),
        inspect.Parameter("random_start", _KW, default=True, annotation=bool),
        inspect.Parameter(
            "image_target",
            _KW,
            default="perturbed-prompts",
            annotation=Literal["perturbed-prompts", "clean-prompts"],
        ),
        *text_attack_parameters(),
    ],
)
