"""The guidance captions of SGA's image step as the authors' CLIP wrapper encodes them.

Their eval script passes `max_lemgth=77` (a typo) to SGAttacker.attack, whose `max_length`
therefore stays 30: the stage-1 adversarial captions are BERT-tokenised, cut to 30 tokens
([CLS] and [SEP] included, so 28 word pieces), decoded back to text (special tokens removed) and
only then CLIP-tokenised (eval_clip-vit2clip-cnn.py:80, attacker.py:17-29, clip_model/model.py:393-398).
`guide_max_tokens = 30` on SGA reproduces this; None (default) encodes the captions as they are."""

from __future__ import annotations

from typing import Any

from clip_robust_ext.api import ClipxUsageError


def bert_tokenizer(masked_lm: Any, tokenizer: Any) -> Any:
    """The BERT tokenizer of the text attack's masked LM (a passed tokenizer object, a local
    folder or a cached hub name), without loading the model."""
    if tokenizer is not None:
        return tokenizer
    if not isinstance(masked_lm, str):
        raise ClipxUsageError("sga: guide_max_tokens with a masked-LM object needs its tokenizer")
    from transformers import AutoTokenizer  # heavy; needed only for this option

    try:
        return AutoTokenizer.from_pretrained(masked_lm, use_fast=True, local_files_only=True)
    except OSError:
        raise ClipxUsageError(
            f"sga: guide_max_tokens needs the BERT tokenizer of '{masked_lm}' locally "
            "(text_attack.masked_lm = a local folder)"
        ) from None


def truncate_like_reference(texts: list[str], tokenizer: Any, max_tokens: int) -> list[str]:
    """Each text BERT-tokenised, cut to `max_tokens` tokens (special tokens included), decoded."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_tokens)["input_ids"]
    return [
        tokenizer.decode(i, skip_special_tokens=True, clean_up_tokenization_spaces=True).strip()
        for i in ids
    ]
