"""Text-attack settings and per-text results (plain data; no TextAttack import)."""

from __future__ import annotations

import inspect
import typing
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ...errors import ClipxUsageError

TRANSFORMATIONS = ("bert-mlm", "wordnet", "charswap")
GOALS = ("kl", "zero-shot", "image-guided")
# goals scored against reference embeddings (`anchors`) that each text's label indexes
ANCHORED_GOALS = ("zero-shot", "image-guided")
TARGETS = ("prompts", "captions")
SUBSTITUTE_POSITIONS = ("word", "previous-token")
STOPWORD_LISTS = ("clipx", "reference")
# reference-code options (docs/FIDELITY.md#mmcoa) and their defaults
FIDELITY_DEFAULTS = {"substitutes_from": "word", "stopwords": "clipx"}


@dataclass(frozen=True)
class TextAttackConfig:
    """Defaults follow Co-Attack/MMCoA's BERT-Attack: k = 10 masked-LM candidates, logit threshold
    0.3, one word changed, 30 BERT tokens, label-free KL goal.

    transformation: "bert-mlm" | "wordnet" | "charswap" (see compose.py)
    goal:           "kl" (maximise KL of softmaxed clean vs perturbed text embedding) |
                    "zero-shot" (untargeted: the prompt stops matching its class) |
                    "image-guided" (SGA: minimise the cosine to the text's own image embedding,
                    anchors[label]; maximised, never complete)
    masked_lm:      hub name or local folder for "bert-mlm" (objects are passed to the attacker)
    min_words:      texts with fewer words are returned unchanged and reported as skipped
    kl_threshold:   stop once KL exceeds it (None = keep the best swap found)
    substitutes_from: "word" (BERT-Attack: the masked LM's predictions at the word's own tokens) |
                    "previous-token" (MMCoA's / Co-Attack's bert_attack.py, whose slicing ignores
                    [CLS]: a word gets the predictions for the token before it; paper numbers only)
    stopwords:      "clipx" (NLTK's list in every case; stop words may be substitutes) |
                    "reference" (the BERT-Attack lineage's case-sensitive list with punctuation;
                    stop words are never substitutes), see docs/FIDELITY.md#mmcoa
    """

    transformation: str = "bert-mlm"
    goal: str = "kl"
    max_words: int = 1
    max_candidates: int = 10
    masked_lm: str = "bert-base-uncased"
    min_confidence: float | None = 0.3
    max_length: int = 30
    min_words: int = 2
    kl_threshold: float | None = None
    seed: int = 0
    batch_size: int = 256
    substitutes_from: Literal["word", "previous-token"] = "word"
    stopwords: Literal["clipx", "reference"] = "clipx"

    def __post_init__(self) -> None:
        if self.transformation not in TRANSFORMATIONS:
            raise ClipxUsageError(
                f"text transformation must be one of {', '.join(TRANSFORMATIONS)}, got {self.transformation!r}"
            )
        if self.goal not in GOALS:
            raise ClipxUsageError(
                f"text-attack goal must be one of {', '.join(GOALS)}, got {self.goal!r}"
            )
        if self.substitutes_from not in SUBSTITUTE_POSITIONS:
            raise ClipxUsageError(
                f"text-attack substitutes_from must be one of {', '.join(SUBSTITUTE_POSITIONS)}, got {self.substitutes_from!r}"
            )
        if self.stopwords not in STOPWORD_LISTS:
            raise ClipxUsageError(
                f"text-attack stopwords must be one of {', '.join(STOPWORD_LISTS)}, got {self.stopwords!r}"
            )
        for name in ("max_words", "max_candidates", "max_length", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ClipxUsageError(
                    f"text-attack {name} must be a positive integer, got {value!r}"
                )
        if not isinstance(self.min_words, int) or self.min_words < 1:
            raise ClipxUsageError(
                f"text-attack min_words must be a positive integer, got {self.min_words!r}"
            )

    def key(self) -> tuple:
        # the fidelity options enter only when set: caches made before they existed stay valid
        return tuple(sorted(self.to_dict(omit_defaults=FIDELITY_DEFAULTS).items()))

    def to_dict(self, omit_defaults: dict[str, Any] | None = None) -> dict[str, Any]:
        """All fields; those in `omit_defaults` are left out while at that value."""
        out = asdict(self)
        for key, default in (omit_defaults or {}).items():
            if out.get(key) == default:
                out.pop(key)
        return out


def text_attack_parameters() -> list[inspect.Parameter]:
    """The keyword parameters of an attack on class prompts (TextAttackOnPrompts): target,
    anchors, every TextAttackConfig field, tokenizer. For `checked(..., extra=...)`, so a recipe's
    text-attack keys are checked at `clipx recipe show`."""
    kw = inspect.Parameter.KEYWORD_ONLY
    hints = typing.get_type_hints(TextAttackConfig)
    out = [
        inspect.Parameter("target", kw, default="prompts", annotation=str),
        inspect.Parameter("anchors", kw, default="text", annotation=Any),
    ]
    for name, spec in TextAttackConfig.__dataclass_fields__.items():
        annotation = Any if name == "masked_lm" else hints[name]  # a name, a path or a model
        out.append(inspect.Parameter(name, kw, default=spec.default, annotation=annotation))
    out.append(inspect.Parameter("tokenizer", kw, default=None, annotation=Any))
    return out


@dataclass
class TextAttackRecord:
    """One attacked text. status: 'perturbed' | 'unchanged' (no swap raised the goal score) |
    'skipped' (too short, only stop words, or already misclassified: see `reason`).
    succeeded: the goal was met (zero-shot: the prompt no longer matches its class; KL without a
    threshold: a word was swapped)."""

    original: str
    perturbed: str
    status: str
    score: float = 0.0  # goal score of `perturbed`: KL, or 1 - p(true class) for zero-shot
    label: int | None = None
    reason: str = ""
    changed: list[dict[str, Any]] = field(default_factory=list)  # [{index, old, new}]
    queries: int = 0
    succeeded: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
