"""SGA (set-level guidance attack) on image-text retrieval: registry, eps ball, the image-guided
text goal, the set-level image step, and its strength next to Co-Attack."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from helpers import tiny_clip

from clip_robust_ext.api import ClipxUsageError, build_attack, procedural_galleries
from clip_robust_ext.attacks import verify_adversarial
from clip_robust_ext.cli import cli
from clip_robust_ext.models import ZeroShotClassifier


def _zs(seed: int = 3) -> ZeroShotClassifier:
    return ZeroShotClassifier(tiny_clip(seed), ["object"]).eval()


def test_clipx_attacks_lists_sga_as_a_retrieval_attack():
    rows = json.loads(
        CliRunner().invoke(cli, ["attacks", "--json", "--modality", "retrieval"]).stdout
    )
    assert [(r["name"], r["plugin"], r["modality"]) for r in rows] == [("sga", "sga", "retrieval")]
    assert rows[0]["params"]["caption_set"] == "adversarial"


def test_a_retrieval_attack_is_refused_by_classification():
    with pytest.raises(ClipxUsageError, match="coattack-retrieval"):
        build_attack("sga", _zs())


def test_image_step_stays_in_the_ball_and_lowers_the_set_similarity():
    from clipx_sga.image import SGAImageStep

    zs = _zs()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g)
    owner = torch.tensor([0, 0, 1, 2, 3, 3])
    texts = torch.nn.functional.normalize(
        torch.randn(6, zs.clip.text_projection.shape[1], generator=g), dim=-1
    )
    own = (owner.view(1, -1) == torch.arange(4).view(-1, 1)).float()
    torch.manual_seed(0)
    adv = SGAImageStep(zs, eps=4 / 255, steps=5)(x, texts, owner)
    verify_adversarial(x, adv, 4 / 255)
    with torch.no_grad():
        before = ((zs.encode_image(x) @ texts.t()) * own).sum()
        after = ((zs.encode_image(adv) @ texts.t()) * own).sum()
    assert after < before
    # the scale set: the image, then one resized, noised copy per scale, all at the input size
    copies = SGAImageStep(zs, scales=(0.5, 1.5)).scaled_copies(x)
    assert copies.shape == (12, 3, 32, 32) and torch.equal(copies[:4], x)


def test_image_guided_text_goal_moves_captions_away_from_their_image():
    from clip_robust_ext.api import CLIPTextAttacker, TextAttackConfig

    zs = _zs()
    gallery = procedural_galleries(n_galleries=1, gallery_size=4, n_captions=2)[0]
    with torch.no_grad():
        anchors = zs.encode_image(gallery.images)
    attacker = CLIPTextAttacker(
        zs, TextAttackConfig(transformation="charswap", goal="image-guided"), anchors=anchors
    )
    owner = gallery.text_owner.tolist()
    records = attacker.attack_texts(gallery.texts, owner)
    with torch.no_grad():
        clean = (zs.encode_text(gallery.texts) * anchors[owner]).sum(-1)
        adv = (zs.encode_text([r.perturbed for r in records]) * anchors[owner]).sum(-1)
    changed = [r.status == "perturbed" for r in records]
    assert any(changed) and all(len(r.changed) <= 1 for r in records)
    assert (adv[changed] < clean[changed]).all() and torch.equal(
        adv[[not c for c in changed]], clean[[not c for c in changed]]
    )
    for r, c in zip(records, adv):  # the recorded score is -cos to the caption's own image
        assert r.score == pytest.approx(-float(c), abs=1e-4) or r.status != "perturbed"
    # anchors set after the attack was built reach its scorer (SGA's second text stage)
    attacker.anchors = -anchors
    again = attacker.attack_one(gallery.texts[0], owner[0])
    assert again.score == pytest.approx(
        -float(-(zs.encode_text([again.perturbed]) @ anchors[owner[0]]).detach()), abs=1e-4
    )


def test_sga_in_the_retrieval_protocol_checks_the_ball_and_lowers_recall(tmp_path):
    from clip_robust_ext.registry import get

    proto = get("evaluators", "coattack-retrieval").obj(
        galleries={"source": "procedural", "n_galleries": 1, "gallery_size": 6},
        eps=["4/255"],
        steps=3,
        modes=["clean", "sga"],
        text_attack={"transformation": "charswap"},
        attack_params={"sga": {"scales": [0.5, 1.5], "caption_set": "adversarial+original"}},
    )
    records = {r["attack"]: r for r in proto.evaluate_with(_zs().loaded, tmp_path, "clip")}
    sga = records["sga"]
    assert sga["eps"] == pytest.approx(4 / 255) and sga["text_attack"]["total"] == 30
    assert sum(sga["recall"].values()) < sum(records["clean"]["recall"].values())
    with pytest.raises(ClipxUsageError, match="attack_params.pgd"):
        get("evaluators", "coattack-retrieval").obj(
            modes=["clean", "sga"], attack_params={"pgd": {}}
        )
    with pytest.raises(ClipxUsageError, match="caption_set"):
        from clipx_sga.attack import SGA

        SGA(_zs(), caption_set="original")


@pytest.mark.slow
def test_sga_is_at_least_as_strong_as_coattack_at_r1_on_the_shipped_gallery(tmp_path):
    """The recipe's setting (recipes/sga.toml: procedural-small, the procedural gallery, eps 2/255,
    10 steps, WordNet) on its first gallery. Measured: both attacks take R@1 to 0 both ways; SGA
    also takes TR@5 to 0 (Co-Attack leaves 5) and IR@5 to 9 (Co-Attack 12), R@10 equal, so its
    summed attack success rate is higher. Over both galleries and the TeCoA model
    the two trade places at some K by a few points (docs/results.md, SGA)."""
    from clip_robust_ext.api import procedural_small
    from clip_robust_ext.registry import get

    proto = get("evaluators", "coattack-retrieval").obj(
        galleries={"source": "procedural", "n_galleries": 1, "gallery_size": 20},
        eps=["2/255"],
        modes=["clean", "coattack", "sga"],
        text_attack={"transformation": "wordnet", "max_candidates": 10, "max_words": 1},
    )
    records = {r["attack"]: r for r in proto.evaluate_with(procedural_small(), tmp_path, "clip")}
    sga, co = records["sga"]["asr"], records["coattack"]["asr"]
    for k in ("ASR_TR@1", "ASR_IR@1"):
        assert sga[k] >= co[k] > 0
    assert sum(sga.values()) > sum(co.values())


def test_multi_seed_retrieval_records_aggregate_per_model_and_attack():
    """`[recipe] seeds` on a retrieval protocol (recipes/sga.toml --profile seeds): mean ± std of
    every R@K and attack success rate per (model, attack, eps), hand-computed."""
    from clip_robust_ext.evaluation.spread import aggregate, retrieval_spread_table

    def rec(seed, attack, tr1):
        return {"kind": "retrieval", "label": "clip", "attack": attack, "eps": 2 / 255,
                "eps_str": "2/255", "n_images": 40, "n_texts": 200, "run_seed": seed,
                "recall": {"TR@1": tr1}, "asr": {"ASR_TR@1": 50.0 - tr1}}  # fmt: skip

    rows = aggregate([rec(0, "sga", 10.0), rec(1, "sga", 20.0), rec(0, "coattack", 30.0)])
    sga = next(r for r in rows if r["attack"] == "sga")
    assert sga["recall"]["TR@1"]["values"] == [10.0, 20.0] and sga["n_seeds"] == 2
    assert sga["asr"]["ASR_TR@1"]["mean"] == 35.0
    assert sga["recall"]["TR@1"]["std"] == pytest.approx(7.0710678)
    assert "| clip | sga | 2/255 | 2 | 15.0 ± 7.1 | 35.0 ± 7.1 |" in retrieval_spread_table(rows)
