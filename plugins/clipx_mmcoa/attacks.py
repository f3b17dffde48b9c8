"""Factories of the registered text and multimodal attacks (TextAttack loads on first use).

Each factory carries an explicit `__signature__` so recipes check parameter names and types
before any work starts."""

from __future__ import annotations

import inspect
import typing
from typing import Any, Literal

from clip_robust_ext.attacks.text.config import TextAttackConfig
from clip_robust_ext.models import ZeroShotClassifier

_KW = inspect.Parameter.KEYWORD_ONLY


def _text_parameters() -> list[inspect.Parameter]:
    hints = typing.get_type_hints(TextAttackConfig)
    out = [
        inspect.Parameter("target", _KW, default="prompts", annotation=str),
        inspect.Parameter("anchors", _KW, default="text", annotation=Any),
    ]
    for name, field in TextAttackConfig.__dataclass_fields__.items():
        annotation = Any if name == "masked_lm" else hints[name]  # a name, a path or a model object
        out.append(inspect.Parameter(name, _KW, default=field.default, annotation=annotation))
    out.append(inspect.Parameter("tokenizer", _KW, default=None, annotation=Any))
    return out


def _signature(extra: list[inspect.Parameter]) -> inspect.Signature:
    model = inspect.Parameter(
        "model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=ZeroShotClassifier
    )
    return inspect.Signature([model, *extra, *_text_parameters()])


def text_attack(model: ZeroShotClassifier, **params: Any):
    """text-attack(model, transformation="bert-mlm", goal="kl", max_words=1, max_candidates=10,
    masked_lm="bert-base-uncased", min_confidence=0.3, target="prompts", anchors="text", seed=0)."""
    from clip_robust_ext.attacks.text.classifier import TextAttackOnPrompts

    return TextAttackOnPrompts(model, **params)


def multimodal(model: ZeroShotClassifier, **params: Any):
    """multimodal(model, eps="1/255", alpha="1/255", steps=10, image_attack="pgd",
    image_target="perturbed-prompts" | "clean-prompts" (MMCoA's test.py), **text-attack params)."""
    from clip_robust_ext.attacks.text.classifier import MultimodalAttack

    return MultimodalAttack(model, **params)


text_attack.__signature__ = _signature([])
multimodal.__signature__ = _signature(
    [
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
    ]
)
