"""Text attacks on CLIP through TextAttack: threat model, guards, targets, caching, masked-LM path."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_clip

from clip_robust_ext.attacks import build_attack, verify_adversarial
from clip_robust_ext.attacks.text import (
    CLIPTextAttacker,
    TextAttackConfig,
    attack_class_prompts,
    stopwords,
)
from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.models import ZeroShotClassifier

CLASSES = ["cat", "dog", "airplane", "circle"]
TEMPLATES = ["This is a photo of a {}", "a drawing of a {}."]


@pytest.fixture(scope="module")
def zs():
    return ZeroShotClassifier(tiny_clip(seed=1), CLASSES, TEMPLATES)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3])


def _calls() -> int:
    from clip_robust_ext.attacks.text.attacker import TEXTATTACK_CALLS

    return TEXTATTACK_CALLS["n"]


def _words(text: str) -> list[str]:
    from clip_robust_ext.attacks.text.attacker import words_of

    return words_of(text)


def _check_threat_model(records, max_words: int = 1) -> None:
    stop = stopwords()
    for r in records:
        before, after = _words(r.original), _words(r.perturbed)
        assert len(before) == len(after)
        diff = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
        assert len(diff) == len(r.changed) <= max_words
        assert all(before[i].lower() not in stop for i in diff), (r.original, r.perturbed)


def test_wordnet_kl_changes_one_non_stop_word_and_reports_the_kl(zs, images):
    pytest.importorskip("nltk")
    try:
        from clip_robust_ext.attacks.text.env import require_wordnet

        require_wordnet()
    except ClipxUsageError as exc:
        pytest.skip(str(exc))
    x, y = images
    attack = build_attack("text-attack", zs, transformation="wordnet", goal="kl")
    out = attack(x, y)
    assert out.images is x and out.model is not zs
    records = [r for row in attack.impl.result.records for r in row]
    _check_threat_model(records)
    perturbed = [r for r in records if r.status == "perturbed"]
    assert perturbed, "WordNet has synonyms for these class names"
    assert all(r.score > 0 and r.succeeded for r in perturbed)
    assert out.info["goal"] == "kl" and out.info["words_changed_max"] == 1
    assert out.info["goal_score_mean"] == pytest.approx(
        sum(r.score for r in perturbed) / len(perturbed)
    )
    # the returned classifier scores with the perturbed prompts, sharing the CLIP
    assert out.model.clip is zs.clip
    assert out.model.prompts == [[r.perturbed for r in row] for row in attack.impl.result.records]
    assert out.model.prompts != zs.prompts
    assert out.model(x).shape == (4, len(CLASSES))


def test_short_and_stop_word_prompts_are_skipped_not_crashed(zs):
    clf = ZeroShotClassifier(
        zs.loaded, prompts=[["cat"], ["this is a"], ["This is a photo of a dog"]]
    )
    attacker = CLIPTextAttacker(clf, TextAttackConfig(transformation="charswap"))
    records = attack_class_prompts(clf, attacker).records
    (one_word,), (stop_only,), (normal,) = records
    assert (one_word.status, one_word.reason, one_word.perturbed) == (
        "skipped",
        "fewer than 2 words",
        "cat",
    )
    assert (stop_only.status, stop_only.reason, stop_only.perturbed) == (
        "skipped",
        "only stop words",
        "this is a",
    )
    assert normal.status == "perturbed"
    _check_threat_model([normal])
    assert attacker.textattack_calls == 1  # the guarded prompts never reach TextAttack


def test_charswap_is_deterministic_per_seed(zs):
    texts = ["This is a photo of a airplane", "a drawing of a circle."]
    a = CLIPTextAttacker(zs, TextAttackConfig(transformation="charswap", seed=3)).attack_texts(
        texts
    )
    b = CLIPTextAttacker(zs, TextAttackConfig(transformation="charswap", seed=3)).attack_texts(
        texts
    )
    assert [r.perturbed for r in a] == [r.perturbed for r in b]
    assert all(r.status == "perturbed" for r in a)
    _check_threat_model(a)


def test_class_prompts_are_attacked_once_for_every_batch(zs, images, capsys):
    x, y = images
    before = _calls()
    attack = build_attack("text-attack", zs, transformation="charswap", seed=11)
    first = attack(x, y)
    n_prompts = len(CLASSES) * len(TEMPLATES)
    assert _calls() - before == n_prompts
    # one stderr line per prompt attack actually run: threat model and goal score
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("clipx: text-attack (charswap, goal kl): ")
    assert f"{n_prompts}/{n_prompts} class prompts perturbed" in line
    assert "at most 1 word(s) changed" in line
    assert f"KL mean {first.info['goal_score_mean']:.4g}" in line
    for _ in range(5):
        again = attack(x, y)
        assert again.model is first.model
    assert _calls() - before == n_prompts
    # a second attack object on the same classifier and config is served from the cache too
    other = build_attack("text-attack", zs, transformation="charswap", seed=11)
    assert other(x[:1], y[:1]).model.prompts == first.model.prompts
    assert _calls() - before == n_prompts
    # new text-tower weights invalidate it
    with torch.no_grad():
        zs.clip.token_embedding.weight.add_(0.01)
    attack(x, y)
    assert _calls() - before == 2 * n_prompts
    assert capsys.readouterr().err.count("clipx: text-attack") == 1  # served from the cache: silent


def test_the_evaluation_engine_attacks_the_class_prompts_once_for_all_batches(capsys):
    """Protocol "mmcoa"'s shape: text-attack and multimodal over 4 image batches cost one TextAttack
    run per class prompt in all (both attacks share the cached perturbed prompts)."""
    from clip_robust_ext.evaluation import Protocol, evaluate_model

    clf = ZeroShotClassifier(tiny_clip(seed=7), CLASSES, TEMPLATES).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 32, 32, generator=g)
    with torch.no_grad():
        y = clf(x).argmax(1)  # every sample clean-correct, so every batch runs every attack
    text = {"transformation": "charswap", "goal": "kl", "max_words": 1, "seed": 23}
    protocol = Protocol(
        name="t",
        eps=["2/255"],
        batch_size=3,
        n_samples=12,
        attacks=[
            {"name": "text-attack", "label": "text", **text},
            {"name": "multimodal", "label": "multimodal", "steps": 2, "alpha": "1/255", **text},
        ],
    )
    before = _calls()
    (record,) = evaluate_model(clf, list(zip(x, y.tolist())), protocol, indices=list(range(12)))
    assert record["clean_acc"] == 100.0 and set(record["per_attack"]) == {"text", "multimodal"}
    assert _calls() - before == len(CLASSES) * len(TEMPLATES)
    assert capsys.readouterr().err.count("clipx: text-attack (charswap, goal kl)") == 1
    # the threat model and the KL goal score travel with the record (results.json)
    info = record["attack_info"]
    assert set(info) == {"text", "multimodal"} and info["text"] == info["multimodal"]
    t = info["text"]
    assert (t["goal"], t["transformation"], t["target"]) == ("kl", "charswap", "prompts")
    assert t["prompts_total"] == len(CLASSES) * len(TEMPLATES) and t["words_changed_max"] <= 1
    assert t["prompts_perturbed"] > 0 and 0 < t["goal_score_mean"] <= t["goal_score_max"]
    json.dumps(record)  # JSON-safe


def test_zero_shot_goal_moves_prompts_off_their_class(zs):
    attacker_cfg = {"transformation": "charswap", "goal": "zero-shot", "seed": 0}
    attack = build_attack("text-attack", zs, **attacker_cfg)
    out = attack(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
    records = [r for row in attack.impl.result.records for r in row]
    _check_threat_model(records)
    anchors = zs.class_matrix()
    for r in records:
        if r.succeeded:
            with torch.no_grad():
                pred = (zs.encode_text([r.perturbed]) @ anchors.t()).argmax().item()
            assert pred != r.label
            assert 0 <= r.score <= 1
    assert out.info["goal"] == "zero-shot"
    assert out.info["prompts_succeeded"] == sum(r.succeeded for r in records)


def test_bert_mlm_path_runs_offline_with_a_tiny_masked_lm(zs, tmp_path):
    """A tiny randomly initialised BertForMaskedLM over the real bert-base-uncased vocabulary:
    TextAttack's BERT-Attack transformation end to end on CLIP prompts, with nothing downloaded
    (HF_HUB_OFFLINE=1 from conftest); also loaded from a local folder by path."""
    from helpers import assets
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    vocab = assets() / "bert-base-uncased-vocab.txt"
    tok = BertTokenizer(vocab_file=str(vocab))
    torch.manual_seed(0)
    mlm = BertForMaskedLM(
        BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )
    clf = ZeroShotClassifier(zs.loaded, ["cat", "airplane"], ["This is a photo of a {}"])
    attack = build_attack(
        "text-attack",
        clf,
        transformation="bert-mlm",
        masked_lm=mlm,
        tokenizer=tok,
        max_candidates=5,
        min_confidence=None,
    )
    out = attack(torch.rand(1, 3, 32, 32), torch.tensor([0]))
    records = [r for row in attack.impl.result.records for r in row]
    _check_threat_model(records)
    assert all(r.status == "perturbed" for r in records)
    assert all(c["new"] in tok.vocab for r in records for c in r.changed)
    assert out.info["transformation"] == "bert-mlm"

    folder = tmp_path / "tiny-bert"
    mlm.save_pretrained(folder)
    tok.save_pretrained(folder)
    by_path = build_attack(
        "text-attack",
        clf,
        transformation="bert-mlm",
        masked_lm=str(folder),
        max_candidates=5,
        min_confidence=None,
    )
    assert by_path(torch.rand(1, 3, 32, 32), torch.tensor([0])).model.prompts == out.model.prompts

    # Co-Attack's logit threshold drops every candidate of this near-uniform random MLM
    strict = CLIPTextAttacker(
        clf,
        TextAttackConfig(transformation="bert-mlm", min_confidence=50.0),
        masked_lm=mlm,
        tokenizer=tok,
    )
    assert strict.attack_one("This is a photo of a cat").status == "unchanged"


def test_a_missing_masked_lm_is_a_clear_error_not_a_fallback(zs):
    attack = build_attack(
        "text-attack", zs, transformation="bert-mlm", masked_lm="no-such-org/no-such-bert"
    )
    with pytest.raises(ClipxUsageError, match="wordnet' or 'charswap"):
        attack(torch.rand(1, 3, 32, 32), torch.tensor([0]))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"transformation": "bert"}, "transformation must be one of"),
        ({"goal": "targeted"}, "goal must be one of"),
        ({"target": "captions"}, "class prompts"),
        ({"max_words": 0}, "max_words"),
        ({"eps": "1/255"}, "unknown parameter"),
    ],
)
def test_bad_text_attack_parameters_are_usage_errors(zs, params, message):
    with pytest.raises(ClipxUsageError, match=message):
        build_attack("text-attack", zs, **params)


def test_multimodal_attack_perturbs_images_within_eps_against_the_perturbed_classifier(zs, images):
    x, y = images
    text = build_attack("text-attack", zs, transformation="charswap", seed=5)
    multi = build_attack(
        "multimodal", zs, eps="2/255", alpha="1/255", steps=3, transformation="charswap", seed=5
    )
    calls = _calls()
    out = multi(x, y)
    verify_adversarial(x, out.images, 2 / 255, "Linf", "multimodal")
    assert not torch.equal(out.images, x)
    assert out.model.prompts == text(x, y).model.prompts
    assert _calls() == calls or _calls() - calls == len(CLASSES) * len(TEMPLATES)
    assert out.info["eps"] == pytest.approx(2 / 255) and "goal_score_mean" in out.info
    assert multi.eps == pytest.approx(2 / 255)


def test_scoring_with_the_perturbed_classifier_keeps_the_shared_clip_in_eval_mode(zs, images):
    from clip_robust_ext.attacks import attack_mode

    x, y = images
    zs.eval()
    out = build_attack("text-attack", zs, transformation="charswap", seed=5)(x, y)
    with attack_mode(out.model):
        pass
    assert not zs.clip.training and not out.model.training
    zs.train()
    try:
        out = build_attack("text-attack", zs, transformation="charswap", seed=5)(x, y)
        assert out.model.training and zs.clip.training
    finally:
        zs.eval()


@pytest.mark.slow
def test_text_and_multimodal_attacks_break_the_cifar10_clip():
    """On the real small CIFAR-10 CLIP: one WordNet word per class prompt (KL goal) costs far more
    than chance, and PGD against the perturbed-prompt classifier is stronger than either alone."""
    from helpers import CIFAR10_CLASSES, cifar10_batch, small_c10

    from clip_robust_ext.attacks.text.env import require_wordnet

    try:
        require_wordnet()
    except ClipxUsageError as exc:
        pytest.skip(str(exc))
    zs = ZeroShotClassifier(small_c10(), CIFAR10_CLASSES).eval()
    x, y = cifar10_batch(64, seed=1)

    def acc(model, images):
        with torch.no_grad():
            return (model(images).argmax(1) == y).float().mean().item()

    clean = acc(zs, x)
    text = build_attack("text-attack", zs, transformation="wordnet")(x, y)
    torch.manual_seed(0)
    pgd = build_attack("pgd", zs, eps=1 / 255, alpha=1 / 1020, steps=10)(x, y)
    torch.manual_seed(0)
    multi = build_attack(
        "multimodal", zs, eps=1 / 255, alpha=1 / 1020, steps=10, transformation="wordnet"
    )(x, y)
    verify_adversarial(x, multi.images, 1 / 255, "Linf", "multimodal")
    text_acc, pgd_acc, multi_acc = (
        acc(text.model, x),
        acc(zs, pgd.images),
        acc(multi.model, multi.images),
    )
    assert clean > 0.5
    assert text_acc < clean - 0.2, (clean, text_acc)
    assert multi_acc <= min(text_acc, pgd_acc) + 0.02, (text_acc, pgd_acc, multi_acc)
    assert text.info["words_changed_max"] == 1 and text.info["goal_score_mean"] > 0


def _tiny_bert(boost: tuple[str, ...] = ()):
    """A tiny random BertForMaskedLM over bert-base-uncased's vocabulary (no download); `boost`
    tokens get a large output bias so they top every position's predictions."""
    from helpers import assets
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    tok = BertTokenizer(vocab_file=str(assets() / "bert-base-uncased-vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    mlm = BertForMaskedLM(config).eval()
    with torch.no_grad():
        for word in boost:
            mlm.cls.predictions.bias[tok.vocab[word]] += 50.0
    return mlm, tok


def _substitutes(mlm, tok, text: str, index: int, **config) -> list[str]:
    from clip_robust_ext.attacks.text import import_textattack

    import_textattack()  # offline-safe import before any textattack module
    from textattack.shared import AttackedText

    from clip_robust_ext.attacks.text.compose import build_transformation

    swap = build_transformation(
        TextAttackConfig(transformation="bert-mlm", min_confidence=None, **config), mlm, tok
    )
    return [t.words[index] for t in swap._get_transformations(AttackedText(text), [index])]


def test_bert_substitute_offset_option_takes_the_previous_tokens_predictions():
    """MMCoA's / Co-Attack's bert_attack.py slices [CLS]-inclusive predictions with [CLS]-free
    word offsets: a word's candidates are the masked LM's top-k at the token before it.
    Written here: BERT token positions of the unmasked text, top-k rows p (aligned) / p - 1."""
    mlm, tok = _tiny_bert()
    text, index, k = "This is a photo of a cat", 3, 8  # "photo"
    ids = tok(text)["input_ids"]
    pos = ids.index(tok.vocab["photo"])
    with torch.no_grad():
        logits = mlm(torch.tensor([ids])).logits[0]

    def top(row: int) -> set[str]:
        return set(tok.convert_ids_to_tokens(logits[row].topk(k).indices.tolist()))

    aligned = _substitutes(mlm, tok, text, index, max_candidates=k)
    shifted = _substitutes(
        mlm, tok, text, index, max_candidates=k, substitutes_from="previous-token"
    )
    assert aligned and shifted and set(aligned) != set(shifted)
    assert set(aligned) <= top(pos) and set(shifted) <= top(pos - 1)
    assert not set(shifted) & (top(pos) - top(pos - 1))


@pytest.mark.parametrize("target", ["clean-prompts", "perturbed-prompts"])
def test_multimodal_image_target_names_the_classifier_the_image_pgd_attacks(zs, images, target):
    """clean-prompts = MMCoA's test.py (image PGD against the clean prompts); perturbed-prompts =
    clipx's stronger default. Both are scored against the perturbed prompts."""
    x, y = images
    multi = build_attack(
        "multimodal",
        zs,
        eps="2/255",
        alpha="1/255",
        steps=3,
        transformation="charswap",
        seed=5,
        image_target=target,
    )
    victim = multi(x, y).model  # the text attack runs (and is cached) first
    torch.manual_seed(0)
    out = multi(x, y)
    attacked = zs if target == "clean-prompts" else victim
    torch.manual_seed(0)
    pgd = build_attack("pgd", attacked, eps=2 / 255, alpha=1 / 255, steps=3, random_start=True)
    torch.testing.assert_close(out.images, pgd(x, y).images)
    assert out.model is victim and out.info["image_target"] == target
