"""SGA's reference-text options: the guidance captions' 30-token BERT round trip (the authors'
`max_lemgth` typo) and the text attack's [CLS] offset and token length, against expectations
written here."""

from __future__ import annotations

import pytest
import torch
from helpers import assets, tiny_clip
from transformers import BertTokenizer

from clip_robust_ext.api import ClipxUsageError, procedural_galleries
from clip_robust_ext.models import ZeroShotClassifier


@pytest.fixture(scope="module")
def tok():
    return BertTokenizer(vocab_file=str(assets() / "bert-base-uncased-vocab.txt"))


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        (" ".join(["a", "dog"] * 20), " ".join(["a", "dog"] * 14)),  # 30 tokens = 28 pieces
        ("A Man's hat.", "a man's hat."),  # lower-cased by BERT, punctuation re-joined
        ("two dogs play", "two dogs play"),
    ],
)
def test_guidance_captions_are_cut_to_30_bert_tokens_as_the_reference(tok, caption, expected):
    from clipx_sga.guide import truncate_like_reference

    assert truncate_like_reference([caption], tok, 30) == [expected]


def test_sga_image_step_is_guided_by_the_truncated_captions(tok):
    from clipx_sga.attack import SGA

    zs = ZeroShotClassifier(tiny_clip(3), ["object"]).eval()
    gallery = procedural_galleries(n_galleries=1, gallery_size=3, seed=0)[0]
    long = [[f"{c} " + " ".join(["a", "dog"] * 20) for c in caps] for caps in gallery.captions]
    texts = [t for caps in long for t in caps]
    seen: list[list[str]] = []
    encode = zs.encode_text

    def recording(batch, *args, **kwargs):
        if isinstance(batch, list):
            seen.append(list(batch))
        return encode(batch, *args, **kwargs)

    zs.encode_text = recording
    text_attack = {"transformation": "charswap", "tokenizer": tok}
    torch.manual_seed(0)
    SGA(zs, steps=1, text_attack=text_attack, guide_max_tokens=30)(
        gallery.images, texts, gallery.text_owner
    )
    guides = [b for b in seen if len(b) == len(texts)]
    assert any(all(len(tok.tokenize(t)) <= 28 for t in b) for b in guides)
    assert all(len(tok.tokenize(t)) > 28 for t in texts)
    with pytest.raises(ClipxUsageError, match="guide_max_tokens"):
        SGA(zs, text_attack=text_attack, guide_max_tokens=2)


def test_sga_text_attack_takes_the_reference_offset_and_length():
    """substitutes_from / stopwords / max_length reach SGA's text attack (TextAttackConfig fields;
    the offset's behaviour is tested in test_text_attack.py)."""
    from clipx_sga.attack import SGA

    zs = ZeroShotClassifier(tiny_clip(3), ["object"]).eval()
    sga = SGA(
        zs,
        text_attack={"transformation": "charswap", "substitutes_from": "previous-token",
                     "stopwords": "reference", "max_length": 77},
    )  # fmt: skip
    config = sga.text.config
    assert (config.substitutes_from, config.stopwords, config.max_length) == (
        "previous-token", "reference", 77,
    )  # fmt: skip
