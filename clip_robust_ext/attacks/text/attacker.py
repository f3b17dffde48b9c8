"""Run a TextAttack attack on CLIP text, text by text, with clipx's guards and checks.

The TextAttack machinery (and a masked LM) is built on first use, so an attacker whose results
are all served from a cache never imports TextAttack or loads BERT.
"""

from __future__ import annotations

import contextlib
import logging
import random
import warnings
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ...errors import ClipxError
from ...models import ZeroShotClassifier
from ..base import attack_mode
from .config import ANCHORED_GOALS, TextAttackConfig, TextAttackRecord
from .env import import_textattack, stopword_set

# process-wide count of TextAttack `Attack.attack` calls (tests read it)
TEXTATTACK_CALLS = {"n": 0}


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed Python's and NumPy's global RNGs (TextAttack's random swaps use them), then restore."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@contextlib.contextmanager
def _quiet_textattack() -> Iterator[None]:
    # goal-function construction warns "Unknown if model of class ... compatible" for any custom model
    logger = logging.getLogger("textattack.shared.utils.install")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # its logger.warn calls
            yield
    finally:
        logger.setLevel(level)


def words_of(text: str) -> list[str]:
    """TextAttack's word segmentation (punctuation dropped), without importing TextAttack."""
    import_textattack()
    from textattack.shared.utils import words_from_text

    return words_from_text(text)


class CLIPTextAttacker:
    """Attacks strings against the CLIP text tower of `classifier`.

    anchors: (K, D) normalised reference embeddings for goals "zero-shot" and "image-guided"
    (labels index them; settable between calls, e.g. SGA's clean then adversarial images);
    masked_lm / tokenizer: a masked-LM object (and its tokenizer) for "bert-mlm" instead of
    `config.masked_lm`. `textattack_calls` counts the texts actually sent to TextAttack."""

    def __init__(
        self,
        classifier: ZeroShotClassifier,
        config: TextAttackConfig | None = None,
        anchors: torch.Tensor | None = None,
        masked_lm: Any = None,
        tokenizer: Any = None,
    ) -> None:
        self.classifier = classifier
        self.config = config or TextAttackConfig()
        self._wrapper = None
        self.anchors = anchors
        self.masked_lm, self.tokenizer = masked_lm, tokenizer
        self.textattack_calls = 0
        self._attack = None

    @property
    def anchors(self) -> torch.Tensor | None:
        return self._anchors

    @anchors.setter
    def anchors(self, value: torch.Tensor | None) -> None:
        # the built TextAttack wrapper scores against the anchors: keep it in step
        self._anchors = value
        if self._wrapper is not None:
            self._wrapper.set_anchors(value)

    def masked_lm_key(self) -> str:
        if self.masked_lm is None:
            return self.config.masked_lm
        return f"{type(self.masked_lm).__name__}@{id(self.masked_lm):x}"

    def _build(self):
        if self.config.goal in ANCHORED_GOALS and self.anchors is None:
            raise ClipxError(
                f"goal {self.config.goal!r} needs anchors (K, D): reference embeddings the labels index"
            )
        if self._attack is None:
            from .compose import build_textattack, build_transformation
            from .wrapper import CLIPTextModelWrapper

            self._wrapper = CLIPTextModelWrapper(
                self.classifier, anchors=self.anchors, batch_size=self.config.batch_size
            )
            transformation = build_transformation(self.config, self.masked_lm, self.tokenizer)
            with _quiet_textattack():
                self._attack = build_textattack(self._wrapper, self.config, transformation)
        return self._attack

    def _guard(self, text: str) -> str:
        """Why `text` cannot be attacked ('' if it can)."""
        words = words_of(text)
        if len(words) < self.config.min_words:
            return f"fewer than {self.config.min_words} words"
        stop = stopword_set(self.config.stopwords)
        if all(w in stop for w in words):
            return "only stop words"
        return ""

    def attack_one(self, text: str, label: int | None = None) -> TextAttackRecord:
        if self.config.goal in ANCHORED_GOALS and label is None:
            raise ClipxError(f"goal {self.config.goal!r} needs the label of each text")
        reason = self._guard(text)
        if reason:
            return TextAttackRecord(text, text, "skipped", 0.0, label, reason)
        attack = self._build()
        from textattack.attack_results import SkippedAttackResult, SuccessfulAttackResult

        attack.clear_cache()  # model outputs must come from the current weights
        seed = self.config.seed * 1_000_003 + zlib.crc32(text.encode())
        with attack_mode(self.classifier), _seeded(seed):
            result = attack.attack(text, label if label is not None else text)
        self.textattack_calls += 1
        TEXTATTACK_CALLS["n"] += 1
        if isinstance(result, SkippedAttackResult):
            return TextAttackRecord(
                text,
                text,
                "skipped",
                float(result.original_result.score),
                label,
                "already misclassified",
                queries=result.num_queries,
            )
        original, perturbed = (
            result.original_result.attacked_text,
            result.perturbed_result.attacked_text,
        )
        changed = sorted(original.all_words_diff(perturbed))
        record = TextAttackRecord(
            original=text,
            perturbed=perturbed.text,
            status="perturbed" if changed else "unchanged",
            score=float(result.perturbed_result.score)
            if changed
            else float(result.original_result.score),
            label=label,
            changed=[
                {"index": i, "old": original.words[i], "new": perturbed.words[i]} for i in changed
            ],
            queries=int(result.num_queries),
            succeeded=isinstance(result, SuccessfulAttackResult)
            or (bool(changed) and self._maximised()),
        )
        self.check(record)
        return record

    def _maximised(self) -> bool:
        """Goals with no completion test: any kept swap is a success."""
        return self.config.goal == "image-guided" or (
            self.config.goal == "kl" and self.config.kl_threshold is None
        )

    def check(self, record: TextAttackRecord) -> None:
        """The threat model: at most max_words words changed, none of them a stop word."""
        if len(record.changed) > self.config.max_words:
            raise ClipxError(
                f"text attack changed {len(record.changed)} words of {record.original!r} "
                f"(max_words={self.config.max_words})"
            )
        stop = stopword_set(self.config.stopwords)
        bad = [c["old"] for c in record.changed if c["old"] in stop]
        if bad:
            raise ClipxError(f"text attack changed stop word(s) {bad} in {record.original!r}")

    def attack_texts(
        self, texts: Sequence[str], labels: Sequence[int] | None = None
    ) -> list[TextAttackRecord]:
        """One record per text; identical (text, label) pairs are attacked once."""
        labels = list(labels) if labels is not None else [None] * len(texts)
        if len(labels) != len(texts):
            raise ClipxError(f"{len(texts)} texts but {len(labels)} labels")
        done: dict[tuple[str, int | None], TextAttackRecord] = {}
        out = []
        for text, label in zip(texts, labels):
            key = (text, label)
            if key not in done:
                done[key] = self.attack_one(text, label)
            out.append(done[key])
        return out
