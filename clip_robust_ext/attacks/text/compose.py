"""Build a TextAttack `Attack` for CLIP from TextAttack's own parts (imports TextAttack).

search GreedyWordSwapWIR("unk") + constraints RepeatModification, StopwordModification(clipx's
list), MaxWordsPerturbed(max_words) + one transformation:
  "bert-mlm"  WordSwapMaskedLM(method="bert-attack") - BERT-Attack's masked-LM candidates; the masked
              LM is a hub name, a local folder, or a (model, tokenizer) pair. Needs the model files.
  "wordnet"   WordNet synonyms (NLTK data, works offline with $CLIPX_ASSETS/nltk_data).
  "charswap"  DeepWordBug-style character edits (swap, substitute, delete, insert); needs nothing.
Offline recipes name "wordnet" or "charswap" explicitly; a missing masked LM is an error, never a
silent switch to another transformation.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

from ...errors import ClipxError, ClipxUsageError
from .config import TextAttackConfig
from .env import import_textattack, require_wordnet, stopword_set

_ta = import_textattack()
from textattack import Attack  # noqa: E402
from textattack.constraints.overlap import MaxWordsPerturbed  # noqa: E402
from textattack.constraints.pre_transformation import (  # noqa: E402
    RepeatModification,
    StopwordModification,
)
from textattack.goal_functions import UntargetedClassification  # noqa: E402
from textattack.search_methods import GreedyWordSwapWIR  # noqa: E402
from textattack.transformations import (  # noqa: E402
    CompositeTransformation,
    WordSwap,
    WordSwapMaskedLM,
    WordSwapNeighboringCharacterSwap,
    WordSwapRandomCharacterDeletion,
    WordSwapRandomCharacterInsertion,
    WordSwapRandomCharacterSubstitution,
    WordSwapWordNet,
)

from .goals import CLIPEmbeddingKL, CLIPImageGuided  # noqa: E402


class CLIPWordSwapMaskedLM(WordSwapMaskedLM):
    """TextAttack's BERT-Attack swap plus Co-Attack's `threshold_pred_score`: a single-piece
    candidate whose masked-LM logit at the word's position is below `logit_threshold` is dropped.
    (TextAttack applies `min_confidence` only in its "bae" path; Co-Attack/MMCoA use 0.3.)

    Reference-code quirks (docs/FIDELITY.md#mmcoa), off by default:
    previous_token: take a word's candidates (and threshold logits) from the position before it,
      as MMCoA's / Co-Attack's bert_attack.py does by slicing [CLS]-inclusive predictions with
      [CLS]-free word offsets.
    banned: substitutes never proposed (the reference drops stop words as substitutes)."""

    def __init__(
        self,
        *args,
        logit_threshold: float | None = None,
        previous_token: bool = False,
        banned: frozenset[str] = frozenset(),
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.logit_threshold = logit_threshold
        self.previous_token = previous_token
        self.banned = banned

    def _bert_attack_replacement_words(self, current_text, index, id_preds, masked_lm_logits):
        if self.previous_token:  # row p now holds the predictions for token p - 1
            id_preds = id_preds.roll(1, dims=0)
            masked_lm_logits = masked_lm_logits.roll(1, dims=0)
        words = super()._bert_attack_replacement_words(
            current_text, index, id_preds, masked_lm_logits
        )
        words = [w for w in words if w.strip("Ġ") not in self.banned]
        if self.logit_threshold is None or not words:
            return words
        tok = self._lm_tokenizer
        if len(tok.encode(current_text.words[index], add_special_tokens=False)) != 1:
            return words  # Co-Attack thresholds single pieces only
        masked = current_text.replace_word_at_index(index, tok.mask_token)
        ids = self._encode_text(masked.text)["input_ids"][0].tolist()
        if tok.mask_token_id not in ids:
            return words
        pos = ids.index(tok.mask_token_id)
        return [
            w
            for w in words
            if float(masked_lm_logits[pos, tok.convert_tokens_to_ids(w)]) >= self.logit_threshold
        ]

    def extra_repr_keys(self):
        return [*super().extra_repr_keys(), "logit_threshold", "previous_token"]


class OfflineWordSwapWordNet(WordSwapWordNet):
    """WordSwapWordNet without the `nltk.download("omw-1.4")` its constructor runs (a network call
    even when the data exists); English WordNet needs no Open Multilingual Wordnet."""

    def __init__(self, language: str = "eng"):
        if language != "eng":
            raise ClipxUsageError("transformation 'wordnet' supports English only (language 'eng')")
        WordSwap.__init__(self)
        self.language = language


def _offline() -> bool:
    return any(
        os.environ.get(k, "") not in ("", "0") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def load_masked_lm(masked_lm: Any, tokenizer: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a hub name, a local folder, a (model, tokenizer) pair or a model
    object plus `tokenizer`. Hub names are tried from the local cache first; a failed download
    raises ClipxError naming the offline transformations."""
    if isinstance(masked_lm, tuple) and len(masked_lm) == 2:
        masked_lm, tokenizer = masked_lm
    if not isinstance(masked_lm, (str, Path)):
        if tokenizer is None:
            raise ClipxUsageError("a masked-LM object needs its tokenizer (tokenizer=...)")
        return masked_lm, tokenizer
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    name = str(masked_lm)
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ClipxUsageError(
                f"masked_lm path {name} is not a folder (expected a saved transformers model)"
            )
        model = AutoModelForMaskedLM.from_pretrained(str(local))
        return model, tokenizer or AutoTokenizer.from_pretrained(str(local), use_fast=True)
    try:
        model = AutoModelForMaskedLM.from_pretrained(name, local_files_only=True)
        return model, tokenizer or AutoTokenizer.from_pretrained(
            name, use_fast=True, local_files_only=True
        )
    except OSError:
        pass
    hint = (
        f"masked LM '{name}' is not available locally and could not be downloaded; pass a local folder "
        "(masked_lm=/path/to/bert-base-uncased), or choose transformation='wordnet' or 'charswap', "
        "which need no download"
    )
    if _offline():
        raise ClipxUsageError(hint + " (HF_HUB_OFFLINE is set)")
    try:
        model = AutoModelForMaskedLM.from_pretrained(name)
        return model, tokenizer or AutoTokenizer.from_pretrained(name, use_fast=True)
    except Exception as exc:  # network / hub failures of any kind
        raise ClipxError(f"{hint}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc


def build_transformation(config: TextAttackConfig, masked_lm: Any = None, tokenizer: Any = None):
    if config.transformation == "bert-mlm":
        model, tok = load_masked_lm(
            masked_lm if masked_lm is not None else config.masked_lm, tokenizer
        )
        return CLIPWordSwapMaskedLM(
            method="bert-attack",
            masked_language_model=model,
            tokenizer=tok,
            max_length=config.max_length,
            max_candidates=config.max_candidates,
            logit_threshold=config.min_confidence,
            previous_token=config.substitutes_from == "previous-token",
            banned=stopword_set("reference") if config.stopwords == "reference" else frozenset(),
        )
    if config.transformation == "wordnet":
        require_wordnet()
        return OfflineWordSwapWordNet()
    if config.transformation == "charswap":
        letters = string.ascii_lowercase
        return CompositeTransformation(
            [
                WordSwapNeighboringCharacterSwap(random_one=False),
                WordSwapRandomCharacterSubstitution(random_one=False, letters_to_insert=letters),
                WordSwapRandomCharacterDeletion(random_one=False),
                WordSwapRandomCharacterInsertion(random_one=False, letters_to_insert=letters),
            ]
        )
    raise ClipxUsageError(f"unknown text transformation {config.transformation!r}")


def build_textattack(wrapper, config: TextAttackConfig, transformation) -> Attack:
    """The TextAttack Attack: goal (KL, zero-shot or image-guided) + constraints + transformation + greedy WIR."""
    if config.goal == "kl":
        goal = CLIPEmbeddingKL(
            wrapper, threshold=config.kl_threshold, model_batch_size=config.batch_size
        )
    elif config.goal == "zero-shot":
        if wrapper.anchors is None:
            raise ClipxError("goal 'zero-shot' needs a model wrapper with anchors")
        goal = UntargetedClassification(wrapper, model_batch_size=config.batch_size)
    elif config.goal == "image-guided":
        if wrapper.anchors is None:
            raise ClipxError(
                "goal 'image-guided' needs a model wrapper with anchors (image embeddings)"
            )
        goal = CLIPImageGuided(wrapper, model_batch_size=config.batch_size)
    else:
        raise ClipxUsageError(f"unknown text-attack goal {config.goal!r}")
    constraints = [
        RepeatModification(),
        StopwordModification(stopwords=stopword_set(config.stopwords)),
        MaxWordsPerturbed(max_num_words=config.max_words),
    ]
    return Attack(goal, constraints, transformation, GreedyWordSwapWIR(wir_method="unk"))
