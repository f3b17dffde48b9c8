"""Co-Attack (CLIP-KL) and retrieval R@K: hand-computed recall, eps ball, and the paper's ordering."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_clip

from clip_robust_ext.attacks import verify_adversarial
from clip_robust_ext.evaluation.retrieval import attack_success, recall_at_k
from clip_robust_ext.models import ZeroShotClassifier


def test_recall_at_k_hand_computed():
    # 3 images; image 0 owns texts 0,1; image 1 owns text 2; image 2 owns texts 3,4
    owner = torch.tensor([0, 0, 1, 2, 2])
    sim = torch.tensor(
        [
            [0.1, 0.9, 0.8, 0.0, 0.2],  # image 0: best own text (0.9) ranks 1st -> TR@1 hit
            [0.7, 0.1, 0.5, 0.6, 0.0],  # image 1: own text (0.5) ranks 3rd -> miss @1, hit @5
            [0.3, 0.2, 0.1, 0.4, 0.35],  # image 2: own text 3 (0.4) ranks 1st
        ]
    )
    r = recall_at_k(sim, owner, ks=(1, 2, 3))
    assert r["TR@1"] == pytest.approx(200 / 3)
    assert r["TR@2"] == pytest.approx(200 / 3)
    assert r["TR@3"] == pytest.approx(100.0)
    # text->image ranks of the own image per text: t0: [0.1,0.7,0.3] -> image0 3rd; t1: 0.9 1st;
    # t2: [0.8,0.5,0.1] -> image1 2nd; t3: [0,0.6,0.4] -> image2 2nd; t4: [0.2,0,0.35] -> 1st
    assert r["IR@1"] == pytest.approx(40.0)
    assert r["IR@2"] == pytest.approx(80.0)
    assert r["IR@3"] == pytest.approx(100.0)
    assert attack_success({"TR@1": 80.0}, {"TR@1": 30.0}) == {"ASR_TR@1": 50.0}


def test_ties_are_not_counted_as_hits():
    owner = torch.tensor([0, 1])
    sim = torch.zeros(2, 2)  # every score equal: no image can claim rank 1
    assert recall_at_k(sim, owner, ks=(1,))["TR@1"] == 0.0


def test_coattack_kl_stays_in_ball_and_moves_embeddings():
    from clipx_coattack.attack import CoAttackKL

    zs = ZeroShotClassifier(tiny_clip(), ["a", "b"])
    x = torch.rand(4, 3, 32, 32)
    text = torch.nn.functional.normalize(torch.randn(4, zs.clip.text_projection.shape[1]), dim=-1)
    torch.manual_seed(0)
    adv = CoAttackKL(zs, eps=2 / 255, steps=5, text_weight=3.0)(x, text)
    verify_adversarial(x, adv, 2 / 255)
    with torch.no_grad():
        moved = (zs.encode_image(adv) - zs.encode_image(x)).norm(dim=1)
    assert (moved > 0).all()


@pytest.mark.slow
def test_coattack_lowers_retrieval_more_than_image_only(tmp_path):
    from helpers import small_c10

    from clip_robust_ext.registry import get

    proto = get("evaluators", "coattack-retrieval").obj(
        galleries={"source": "classes", "dataset": "cifar10-jpegs", "n_galleries": 4},
        eps=["2/255"],
        modes=["clean", "image", "coattack"],
        text_attack={"transformation": "charswap"},
    )
    records = proto.evaluate_with(small_c10(), tmp_path, "clip")
    by = {r["attack"]: r["recall"] for r in records}
    total = lambda m: sum(by[m].values())  # noqa: E731
    assert total("clean") > total("image") > total("coattack")


def test_caption_targets_mean_or_the_reference_last_caption():
    """The authors' loader attacks every (image, caption) pair and keeps, per image, the image
    attacked against its last caption; clipx's default uses the mean of its own captions."""
    from clipx_coattack.attack import caption_targets

    from clip_robust_ext.errors import ClipxUsageError
    from clip_robust_ext.registry import get

    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    owner = torch.tensor([0, 0, 1, 1, 1])  # image 0: captions 0, 1; image 1: captions 2, 3, 4
    last = caption_targets(text, owner, 2, "last-caption")
    torch.testing.assert_close(last, text[[1, 4]])
    mean = caption_targets(text, owner, 2, "mean-caption")
    expected = torch.stack([text[:2].mean(0), text[2:].mean(0)])
    torch.testing.assert_close(mean, expected / expected.norm(dim=-1, keepdim=True))
    shuffled = torch.tensor([1, 0, 1, 0, 1])  # captions need not be contiguous
    torch.testing.assert_close(caption_targets(text, shuffled, 2, "last-caption"), text[[3, 4]])
    with pytest.raises(ClipxUsageError, match="caption_targets"):
        get("evaluators", "coattack-retrieval").obj(caption_targets="first")


def test_retrieval_last_caption_attacks_each_image_against_its_last_caption(tmp_path):
    """The protocol's Co-Attack step gets, per image, the embedding of its LAST caption (the
    text attack is kept from changing any caption: min_words above every caption's length, so
    the expectation needs no attacker: the original last captions, encoded)."""
    from clip_robust_ext.data.captions import procedural_galleries
    from clip_robust_ext.registry import get

    zs = ZeroShotClassifier(tiny_clip(3), ["object"]).eval()
    proto = get("evaluators", "coattack-retrieval").obj(
        galleries={"source": "procedural", "n_galleries": 1, "gallery_size": 6},
        eps=["2/255"],
        modes=["clean", "coattack"],
        caption_targets="last-caption",
        text_attack={"transformation": "charswap", "min_words": 100},
    )
    gallery = procedural_galleries(seed=proto.seed, n_galleries=1, gallery_size=6)[0]
    captured = {}
    original = proto._image_attack

    def spy(zs_, images, eps, weight, text_emb, g_index, mode):
        captured["text"] = text_emb
        return original(zs_, images, eps, weight, text_emb, g_index, mode)

    proto._image_attack = spy
    proto.evaluate_with(zs.loaded, tmp_path, "clip", progress=False)
    # procedural galleries: image i owns captions 5i .. 5i + 4 (five templates), so its last is 5i + 4
    assert gallery.text_owner.tolist() == [i for i in range(6) for _ in range(5)]
    with torch.no_grad():
        expected = zs.encode_text([gallery.texts[5 * i + 4] for i in range(6)])
    torch.testing.assert_close(captured["text"], expected)
