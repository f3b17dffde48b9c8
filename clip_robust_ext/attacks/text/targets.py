"""The two text-attack targets, made explicit (MMCoA attacks both):

* target "prompts": the zero-shot classifier's class prompts (evaluation). The same prompts are
  attacked for every image batch, so the result is cached per (CLIP module, text-tower weights,
  prompts, anchors, attack config): attacking the classifier costs the same for 1 or 1,000 batches.
* target "captions": per-sample captions (training). `CaptionAttackCache` attacks each distinct
  caption string once per refresh period (templated captions repeat across a dataset).
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...models import ZeroShotClassifier
from .attacker import CLIPTextAttacker
from .config import TextAttackRecord

# CLIP module -> {key: PromptAttackResult}. Weak keys: a freed model takes its entries with it, so a
# new model that happens to reuse memory addresses can never hit a stale entry.
_PROMPT_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, PromptAttackResult]] = (
    weakref.WeakKeyDictionary()
)


@dataclass
class PromptAttackResult:
    prompts: list[list[str]]  # perturbed prompts, same shape as classifier.prompts
    records: list[list[TextAttackRecord]]  # one record per prompt

    def summary(self) -> dict:
        flat = [r for row in self.records for r in row]
        scores = [r.score for r in flat if r.status == "perturbed"]
        changed = [len(r.changed) for r in flat]
        examples = [f"{r.original} -> {r.perturbed}" for r in flat if r.status == "perturbed"][:5]
        return {
            "prompts_total": len(flat),
            "prompts_perturbed": sum(r.status == "perturbed" for r in flat),
            "prompts_unchanged": sum(r.status == "unchanged" for r in flat),
            "prompts_skipped": sum(r.status == "skipped" for r in flat),
            "prompts_succeeded": sum(r.succeeded for r in flat),
            "skipped_reasons": sorted({r.reason for r in flat if r.status == "skipped"}),
            "goal_score_mean": float(sum(scores) / len(scores)) if scores else 0.0,
            "goal_score_max": float(max(scores)) if scores else 0.0,
            "words_changed_total": int(sum(changed)),
            "words_changed_max": int(max(changed)) if changed else 0,
            "examples": examples,
        }


def tensor_key(t: torch.Tensor | None) -> str:
    if t is None:
        return "none"
    data = t.detach().float().cpu().contiguous().numpy().tobytes()
    return hashlib.sha1(data).hexdigest()[:16]


def prompt_cache_key(classifier: ZeroShotClassifier, attacker: CLIPTextAttacker) -> tuple:
    return (
        classifier._text_weights_key(),
        str(classifier.device),
        tuple(map(tuple, classifier.prompts)),
        tensor_key(attacker.anchors),
        attacker.config.key(),
        attacker.masked_lm_key(),
    )


def cached_prompt_attack(
    classifier: ZeroShotClassifier, attacker: CLIPTextAttacker
) -> PromptAttackResult | None:
    return _PROMPT_CACHE.get(classifier.clip, {}).get(prompt_cache_key(classifier, attacker))


def attack_class_prompts(
    classifier: ZeroShotClassifier, attacker: CLIPTextAttacker
) -> PromptAttackResult:
    """Target "prompts": every class prompt attacked once (label = its class), cached."""
    key = prompt_cache_key(classifier, attacker)
    per_model = _PROMPT_CACHE.setdefault(classifier.clip, {})
    if key in per_model:
        return per_model[key]
    texts = [p for row in classifier.prompts for p in row]
    labels = [c for c, row in enumerate(classifier.prompts) for _ in row]
    flat = attacker.attack_texts(texts, labels if attacker.config.goal == "zero-shot" else None)
    records, i = [], 0
    for row in classifier.prompts:
        records.append(flat[i : i + len(row)])
        i += len(row)
    result = PromptAttackResult([[r.perturbed for r in row] for row in records], records)
    per_model[key] = result
    return result


class CaptionAttackCache:
    """Target "captions": adversarial captions for training, one TextAttack run per distinct
    caption string per refresh period. `refresh(period)` drops the cache when `period` (e.g. the
    epoch, or step // N) changes, so captions are re-attacked against the current weights."""

    def __init__(self, attacker: CLIPTextAttacker) -> None:
        self.attacker = attacker
        self._cache: dict[str, TextAttackRecord] = {}
        self._period: object = None
        self.hits = 0
        self.misses = 0

    def refresh(self, period: object) -> None:
        if period != self._period:
            self._cache.clear()
            self._period = period

    def __call__(self, captions: Sequence[str]) -> list[TextAttackRecord]:
        out = []
        for caption in captions:
            if caption in self._cache:
                self.hits += 1
            else:
                self.misses += 1
                self._cache[caption] = self.attacker.attack_one(caption)
            out.append(self._cache[caption])
        return out
