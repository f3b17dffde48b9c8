"""The reference text pipeline of Co-Attack, MMCoA and SGA, checked against expectations written
here: their stop-word list, their caption cleaning and Co-Attack's unclamped positive start."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_clip
from test_text_attack import _substitutes, _tiny_bert

from clip_robust_ext.attacks.text import CLIPTextAttacker, TextAttackConfig, TextAttackRecord
from clip_robust_ext.attacks.text.env import stopword_set
from clip_robust_ext.data.captions import pre_caption
from clip_robust_ext.errors import ClipxError, ClipxUsageError
from clip_robust_ext.models import ZeroShotClassifier

# bert_attack.py's `filter_words` (MMCoA 5217ba9 attack/bert_attack.py:7-33; the same in Co-Attack
# and SGA): 292 distinct case-sensitive entries, written out here, not read from clipx
REFERENCE_FILTER_WORDS = {
    '!', '"', '%', '&', '(', ')', '*', '+', ',', '-', '.', '/', ':', ';', '<', '=', '>', '?',
    '@', '^', 'a', 'a the', 'about', 'above', 'across', 'after', 'afterwards', 'again',
    'against', 'ain', 'all', 'almost', 'alone', 'along', 'already', 'also', 'although', 'am',
    'among', 'amongst', 'an', 'and', 'another', 'any', 'anyhow', 'anyone', 'anything', 'anyway',
    'anywhere', 'are', 'aren', "aren't", 'around', 'as', 'at', 'b', 'back', 'been', 'before',
    'beforehand', 'behind', 'being', 'below', 'beside', 'besides', 'between', 'beyond', 'both',
    'but', 'by', 'can', 'cannot', 'could', 'couldn', "couldn't", 'd', 'didn', "didn't", 'doesn',
    "doesn't", 'don', "don't", 'down', 'due', 'during', 'either', 'else', 'elsewhere', 'empty',
    'enough', 'even', 'ever', 'everyone', 'everything', 'everywhere', 'except', 'first', 'for',
    'former', 'formerly', 'from', 'hadn', "hadn't", 'hasn', "hasn't", 'haven', "haven't", 'he',
    'hence', 'her', 'here', 'hereafter', 'hereby', 'herein', 'hereupon', 'hers', 'herself',
    'him', 'himself', 'his', 'how', 'however', 'hundred', 'i', 'if', 'in', 'indeed', 'into',
    'is', 'isn', "isn't", 'it', "it's", 'its', 'itself', 'just', 'latter', 'latterly', 'least',
    'll', 'may', 'me', 'meanwhile', 'mightn', "mightn't", 'mine', 'more', 'moreover', 'most',
    'mostly', 'must', 'mustn', "mustn't", 'my', 'myself', 'namely', 'needn', "needn't",
    'neither', 'never', 'nevertheless', 'next', 'no', 'nobody', 'none', 'noone', 'nor', 'not',
    'nothing', 'now', 'nowhere', 'o', 'of', 'off', 'on', 'once', 'one', 'only', 'onto', 'or',
    'other', 'others', 'otherwise', 'our', 'ours', 'ourselves', 'out', 'over', 'per', 'please',
    's', 'same', 'shan', "shan't", 'she', "she's", "should've", 'shouldn', "shouldn't", 'some',
    'somehow', 'something', 'sometime', 'somewhere', 'such', 't', 'than', 'that', "that'll",
    'the', 'their', 'theirs', 'them', 'themselves', 'then', 'thence', 'there', 'thereafter',
    'thereby', 'therefore', 'therein', 'thereupon', 'these', 'they', 'this', 'those', 'through',
    'throughout', 'thru', 'thus', 'to', 'too', 'toward', 'towards', 'under', 'unless', 'until',
    'up', 'upon', 'used', 've', 'was', 'wasn', "wasn't", 'we', 'were', 'weren', "weren't",
    'what', 'whatever', 'when', 'whence', 'whenever', 'where', 'whereafter', 'whereas',
    'whereby', 'wherein', 'whereupon', 'wherever', 'whether', 'which', 'while', 'whither',
    'who', 'whoever', 'whole', 'whom', 'whose', 'why', 'with', 'within', 'without', 'won',
    "won't", 'would', 'wouldn', "wouldn't", 'y', 'yet', 'you', "you'd", "you'll", "you're",
    "you've", 'your', 'yours', 'yourself', 'yourselves', '|', '·', '～'
}  # fmt: skip


def test_reference_stopwords_are_the_authors_list_exactly():
    assert len(REFERENCE_FILTER_WORDS) == 292
    assert stopword_set("reference") == REFERENCE_FILTER_WORDS
    # words clipx's earlier list protected that the reference attacks
    assert not {"be", "do", "has", "have", "so", "very", "each", "because", "via"} & (
        stopword_set("reference")
    )


def test_reference_stopwords_drop_stop_word_substitutes_only():
    """bert_attack.py drops a candidate that is in `filter_words` (:98); 'so', 'very' and 'be' are
    not in it, so the reference proposes them; clipx's default list proposes every candidate."""
    boosted = ("the", "of", "kite", "so", "very", "be")
    mlm, tok = _tiny_bert(boost=boosted)
    text, index = "This is a photo of a cat", 3
    default = _substitutes(mlm, tok, text, index, max_candidates=10)
    reference = _substitutes(mlm, tok, text, index, max_candidates=10, stopwords="reference")
    assert set(boosted) <= set(default)
    assert {"kite", "so", "very", "be"} <= set(reference)
    assert not set(reference) & REFERENCE_FILTER_WORDS


@pytest.mark.parametrize(
    ("text", "index", "new", "reference_allows", "clipx_allows"),
    [
        ("This is a photo of a cat", 0, "That", True, False),  # "This" is not in the list
        ("this is a photo of a cat", 0, "that", False, False),
        ("so big a cat", 0, "too", True, False),  # "so" is not a reference stop word
        ("This is a photo of a cat", 5, "one", False, False),
        ("This is a photo of a cat", 6, "dog", True, True),
    ],
)
def test_which_words_the_threat_model_lets_the_attack_change(
    text, index, new, reference_allows, clipx_allows
):
    zs = ZeroShotClassifier(tiny_clip(seed=1), ["cat", "dog"], ["{}"])
    words = text.split(" ")
    old, words[index] = words[index], new
    change = [{"index": index, "old": old, "new": new}]
    record = TextAttackRecord(text, " ".join(words), "perturbed", changed=change)
    for stopwords, allowed in (("reference", reference_allows), ("clipx", clipx_allows)):
        config = TextAttackConfig(transformation="charswap", stopwords=stopwords)
        attacker = CLIPTextAttacker(zs, config)
        if allowed:
            attacker.check(record)
        else:
            with pytest.raises(ClipxError, match="stop word"):
                attacker.check(record)


# (raw caption, what Co-Attack's / SGA's loader feeds the models), worked out by hand from their
# pre_caption: lower-case; delete , . ' ! ? " ( ) * # : ; ~; '-' and '/' -> space; '<person>' ->
# 'person'; runs of >= 2 whitespace -> one space; strip; keep the first 30 space-separated words
PRE_CAPTION_TABLE = [
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
    ("Two dogs -- one black/white -- play.", "two dogs one black white play"),
    ('<PERSON> says: "Hi!" (loudly)', "person says hi loudly"),
    ("It's a dog's life; isn't it?", "its a dogs life isnt it"),
    ("  Leading and trailing spaces  ", "leading and trailing spaces"),
    ("tab\tstays  but\t\truns collapse\n", "tab\tstays but runs collapse"),
    ("A~B*C#D", "abcd"),
    ("Price: $5 & 10% off [sale] @home", "price $5 & 10% off [sale] @home"),
    (" ".join(f"W{i}" for i in range(35)), " ".join(f"w{i}" for i in range(30))),
    ("Self-driving car", "self driving car"),
]


@pytest.mark.parametrize(("raw", "expected"), PRE_CAPTION_TABLE)
def test_pre_caption_matches_the_reference_loaders(raw, expected):
    assert pre_caption(raw) == expected


def test_pre_caption_is_a_gallery_option():
    from clipx_coattack.retrieval import build_galleries, check_galleries

    spec = {"source": "procedural", "n_galleries": 1, "gallery_size": 3}
    raw = build_galleries(spec, seed=0)[0]
    clean = build_galleries({**spec, "pre_caption": True}, seed=0)[0]
    assert torch.equal(raw.images, clean.images)
    # procedural captions are "a photo of a red circle." and the like: cleaning drops the full stop
    assert any(c.endswith(".") for c in raw.texts)
    assert clean.texts == [c.rstrip(".").lower() for c in raw.texts]
    short = build_galleries({**spec, "pre_caption": 2}, seed=0)[0]
    assert short.texts == [" ".join(c.split(" ")[:2]) for c in clean.texts]
    for bad in ("yes", 0, -3):
        with pytest.raises(ClipxUsageError, match="pre_caption"):
            check_galleries({"source": "procedural", "pre_caption": bad})


def test_positive_start_is_not_clamped_as_in_the_reference():
    """Co-Attack's ImageAttacker: delta ~ U[0, eps], the first gradient taken at image + delta
    (up to 1 + eps on white pixels); every step then projects and clamps."""
    from clipx_coattack.attack import CoAttackKL

    zs = ZeroShotClassifier(tiny_clip(), ["a", "b"])
    x = torch.rand(2, 3, 32, 32)
    x[:, :, :8] = 1.0  # white rows
    eps = 8 / 255
    seen = []
    encode = zs.encode_image

    def recording(images):
        seen.append(images.detach().clone())
        return encode(images)

    zs.encode_image = recording
    torch.manual_seed(3)
    expected_start = x + torch.empty_like(x).uniform_(0, eps)  # the reference's start, unclamped
    torch.manual_seed(3)
    adv = CoAttackKL(zs, eps=eps, steps=1, text_weight=0.0, random_start="positive")(x)
    assert torch.equal(seen[1], expected_start) and seen[1].max() > 1.0
    assert adv.min() >= 0 and adv.max() <= 1 and (adv - x).abs().max() <= eps + 1e-7
