"""SAFT plugin: description sets, refinement, the semantic-ensemble attack, the defenses, the grid.

Unit tests on clipx-tiny (random weights: plumbing and maths, not accuracy)."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from clipx_saft import SAFT, TGAZSR, SemanticEnsemblePGD, build_class_descriptions
from clipx_saft.attack import ensemble_ce
from clipx_saft.attention import attention_map, features_and_tokens
from clipx_saft.descriptions import (
    DescriptionFallbackWarning,
    load_description_file,
    match_classes,
    shipped_sets,
)
from clipx_saft.protocol import evaluate_grid, grid_cells, grid_markdown
from helpers import CIFAR10_CLASSES, tiny_clip

from clip_robust_ext.attacks import build_attack, verify_adversarial
from clip_robust_ext.data.procedural import SHAPES
from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.models import ZeroShotClassifier
from clip_robust_ext.registry import entries, get
from clip_robust_ext.training import Batch, TrainContext

CIFAR100 = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip(seed=0)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# -- description sets ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,classes",
    [
        ("cifar10-descriptions", CIFAR10_CLASSES),
        ("cifar100-descriptions", CIFAR100),
        ("shapes-descriptions", SHAPES),
    ],
)
def test_shipped_sets_cover_their_classes_with_ten_distinct_descriptions(name, classes):
    data = shipped_sets()[name]
    matches = match_classes(classes, list(data))
    assert all(m is not None for m in matches.values()), [
        c for c, m in matches.items() if m is None
    ]
    assert len(set(matches.values())) == len(classes), "two classes matched the same key"
    for key in matches.values():
        assert len(set(data[key])) >= 10, key
    assert isinstance(entries("templates")[name].obj, dict)  # registered as a description set


def test_cupl_file_loads_and_bad_files_fail_clearly(tmp_path):
    path = tmp_path / "cupl.json"
    path.write_text(
        json.dumps({"Golden Retriever": ["A golden dog.", " ", "A friendly retriever."]})
    )
    assert load_description_file(path) == {
        "Golden Retriever": ["A golden dog.", "A friendly retriever."]
    }
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ClipxUsageError, match="not valid JSON"):
        load_description_file(bad)
    bad.write_text(json.dumps({"dog": [1, 2]}))
    with pytest.raises(ClipxUsageError, match="list of strings"):
        load_description_file(bad)
    with pytest.raises(ClipxUsageError, match="not found"):
        load_description_file(tmp_path / "missing.json")


def test_class_matching_exact_then_fuzzy():
    keys = ["maple tree", "Airplane", "fish", "sweet pepper"]
    got = match_classes(
        ["maple_tree", "airplanes", "aquarium_fish", "Sweet-Pepper", "submarine"], keys
    )
    assert got == {
        "maple_tree": "maple tree",
        "airplanes": "Airplane",
        "aquarium_fish": "fish",
        "Sweet-Pepper": "sweet pepper",
        "submarine": None,
    }


def test_fallback_is_warned_and_reported_and_short_classes_are_padded():
    data = {"cat": ["a cat one", "a cat two"], "dog": [f"dog {i}" for i in range(6)]}
    with pytest.warns(DescriptionFallbackWarning, match="1/3 class"):
        cd = build_class_descriptions(["cat", "dog", "zebra"], data, k=4, filter="none")
    assert cd.fallback == ["zebra"] and cd.padded == ["cat"]
    assert cd.descriptions[0] == ["a cat one", "a cat two", "a cat one", "a cat two"]
    assert cd.descriptions[1] == ["dog 0", "dog 1", "dog 2", "dog 3"]  # 'none' keeps file order
    assert cd.descriptions[2] == ["This is a photo of a zebra"] * 4
    assert cd.info()["fallback"] == ["zebra"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # descriptions off: no warning, the template, K = 1
        none = build_class_descriptions(["cat"], None)
    assert none.descriptions == [["This is a photo of a cat"]] and none.k == 1


def test_bad_description_options_are_usage_errors(tiny):
    zs = ZeroShotClassifier(tiny, ["cat"])
    with pytest.raises(ClipxUsageError, match="filter"):
        build_class_descriptions(["cat"], {"cat": ["a"]}, filter="llm")
    with pytest.raises(ClipxUsageError, match="positive integer"):
        build_class_descriptions(["cat"], {"cat": ["a"]}, k=0, filter="none")
    with pytest.raises(ClipxUsageError, match="not a description set"):
        build_class_descriptions(["cat"], "tecoa", model=zs)
    with pytest.raises(ClipxUsageError, match="cifar10-descriptions"):
        build_class_descriptions(["cat"], "cifar10-descriptons", model=zs)
    with pytest.raises(ClipxUsageError, match="needs a CLIP model"):
        build_class_descriptions(["cat"], {"cat": ["a", "b"]}, k=1)


def test_name_similarity_keeps_the_k_closest_to_the_bare_class_name(tiny):
    zs = ZeroShotClassifier(tiny, ["dog"])
    descs = [
        f"a dog number {i} with {w}"
        for i, w in enumerate(["fur", "a ball", "spots", "a hat", "ears", "paws"])
    ]
    cd = build_class_descriptions(["dog"], {"dog": descs}, k=3, filter="name-similarity", model=zs)
    with torch.no_grad():
        name, feats = zs.encode_text(["dog"]), zs.encode_text(descs)
    best = (feats @ name[0]).argsort(descending=True)[:3].tolist()
    assert cd.descriptions[0] == [descs[i] for i in best]
    assert cd.descriptions[0] != descs[:3] or best == [0, 1, 2]


def test_auto_picks_the_set_that_covers_the_classes(tiny):
    zs = ZeroShotClassifier(tiny, list(SHAPES))
    cd = build_class_descriptions(list(SHAPES), "auto", k=2, model=zs)
    assert cd.source == "shapes-descriptions" and not cd.fallback
    with pytest.warns(DescriptionFallbackWarning, match="no registered description set"):
        cd = build_class_descriptions(["qwzx", "vbnm"], "auto", model=zs)
    assert cd.fallback == ["qwzx", "vbnm"]


# -- the semantic-ensemble attack --------------------------------------------------------------
def test_registered_names():
    assert get("attacks", "semantic-ensemble").modality == "image"
    assert {"saft", "tga-zsr"} <= set(entries("defenses"))


@pytest.mark.parametrize("classes", [CIFAR10_CLASSES, CIFAR100], ids=["10-classes", "100-classes"])
def test_attack_raises_the_ensemble_loss_within_the_ball_for_any_class_count(tiny, classes):
    zs = ZeroShotClassifier(tiny, classes)
    n = 8
    x, y = _images(n), torch.arange(n) % len(classes)
    atk = build_attack("semantic-ensemble", zs, eps="8/255", alpha="2/255", steps=4, k=3)
    calls = zs.text_calls
    torch.manual_seed(0)
    x_adv = atk(x, y).images
    verify_adversarial(x, x_adv, 8 / 255)
    impl = atk.impl
    assert impl.bank.weights().shape == (3, len(classes), 64)
    assert zs.text_calls == calls, "the attack must not re-encode the model's prompts"
    assert impl.bank.text_calls == 1, "descriptions are encoded once, not per step"
    assert not impl.class_descriptions.fallback
    with torch.no_grad():
        assert impl.loss(x_adv, y) > impl.loss(x, y) + 1e-3
    assert (x_adv - x).abs().max() > 4 / 255  # it moved


def test_ensemble_objective_is_the_mean_ce_over_per_description_classifiers(tiny):
    classes = CIFAR10_CLASSES[:4]
    zs = ZeroShotClassifier(tiny, classes)
    atk = SemanticEnsemblePGD(zs, descriptions="cifar10-descriptions", k=3, filter="none")
    x, y = _images(6, seed=1), torch.tensor([0, 1, 2, 3, 0, 1])
    cd = atk.class_descriptions
    with torch.no_grad():
        per_k = [
            F.cross_entropy(zs.with_prompts([[p] for p in cd.column(k)])(x), y) for k in range(3)
        ]
        assert torch.allclose(atk.loss(x, y), torch.stack(per_k).mean(), atol=1e-5)


def test_without_descriptions_it_is_torchattacks_pgd(tiny):
    zs = ZeroShotClassifier(tiny, CIFAR10_CLASSES)
    x, y = _images(8, seed=2), torch.arange(8)
    torch.manual_seed(5)
    mine = build_attack(
        "semantic-ensemble", zs, eps="4/255", alpha="1/255", steps=3, descriptions=None
    )(x, y).images
    torch.manual_seed(5)
    ref = build_attack("pgd", zs, eps="4/255", alpha="1/255", steps=3, random_start=True)(
        x, y
    ).images
    assert (mine - ref).abs().max() < 1e-5


def test_attack_rejects_unknown_parameters(tiny):
    zs = ZeroShotClassifier(tiny, ["cat", "dog"])
    with pytest.raises(ClipxUsageError, match="unknown parameter"):
        build_attack("semantic-ensemble", zs, eps="1/255", n_caps=5)


# -- attention and the defenses ----------------------------------------------------------------
def test_patch_tokens_and_attention_maps(tiny):
    zs = ZeroShotClassifier(tiny, ["cat", "dog"])
    x = _images(3)
    feats, tokens = features_and_tokens(zs, x)
    assert torch.allclose(feats, zs.encode_image(x), atol=1e-6)
    assert tokens.shape == (3, 16, 64)  # 32 px / patch 8 = 4 x 4 patches, joint space 64
    text = zs.class_matrix()[[0, 1, 0]]
    am = attention_map(tokens, text)  # on the patch grid: min-max normalised per image
    assert am.shape == (3, 16)
    assert torch.allclose(am.min(1).values, torch.zeros(3), atol=1e-6)
    assert torch.allclose(am.max(1).values, torch.ones(3), atol=1e-6)
    up = attention_map(tokens, text, size=(32, 32))  # upsampled to the input, as TGA-ZSR does
    assert up.shape == (3, 32 * 32) and up.min() >= 0 and up.max() <= 1


def _ctx(tiny, classes, reference: bool) -> TrainContext:
    model = copy.deepcopy(tiny)
    zs = ZeroShotClassifier(model, classes)
    ref = None
    if reference:
        ref_loaded = copy.deepcopy(tiny)
        ref_loaded.model.eval().requires_grad_(False)
        ref = ZeroShotClassifier(ref_loaded, classes)
    return TrainContext(
        model=zs, reference=ref, classnames=classes, templates=["a {}"], device=torch.device("cpu")
    )


@pytest.mark.parametrize("defense_cls", [SAFT, TGAZSR])
def test_defense_loss_trains_the_vision_tower(tiny, defense_cls):
    classes = list(SHAPES)
    defense = defense_cls(eps="4/255", alpha="2/255", steps=2)
    assert defense.needs_reference
    ctx = _ctx(tiny, classes, reference=True)
    defense.setup(ctx)
    info = defense.descriptions_info
    assert (info["descriptions"], info["k"]) == (
        ("shapes-descriptions", 5) if defense_cls is SAFT else ("template", 1)
    )
    ctx.model.train()
    x, y = _images(6), torch.arange(6)
    loss, metrics = defense.loss(Batch(x, y, [""] * 6), ctx)
    assert torch.isfinite(loss) and {"ce", "adv_acc", "attn_adv", "attn_clean"} <= set(metrics)
    assert metrics["attn_clean"] == pytest.approx(0.0, abs=1e-4)  # theta == theta_0 at the start
    loss.backward()
    visual = ctx.model.clip.visual.conv1.weight.grad
    assert visual is not None and visual.abs().sum() > 0
    assert ctx.model.clip.token_embedding.weight.grad is None


def test_defense_options(tiny):
    plain = SAFT(attn_alpha=0, attn_beta=0)
    assert not plain.needs_reference
    ctx = _ctx(tiny, CIFAR10_CLASSES, reference=False)
    loss, metrics = plain.loss(Batch(_images(4), torch.arange(4), [""] * 4), ctx)
    assert torch.isfinite(loss) and "attn_adv" not in metrics
    assert plain.config()["eps"] == "1/255"
    with pytest.raises(ClipxUsageError, match="attn_beta"):
        SAFT(attn_beta=-1)
    with pytest.raises(ClipxUsageError, match="distance"):
        SAFT(distance="kl")
    with pytest.raises(TypeError):
        TGAZSR(descriptions="cifar10-descriptions")


def test_ensemble_ce_reduction():
    logits = torch.randn(5, 3, 4)
    y = torch.tensor([0, 1, 2, 3, 0])
    per = ensemble_ce(logits, y, reduction="none")
    manual = torch.stack(
        [F.cross_entropy(logits[:, k], y, reduction="none") for k in range(3)]
    ).mean(0)
    assert torch.allclose(per, manual) and torch.allclose(ensemble_ce(logits, y), manual.mean())


# -- the attack-text x evaluation-text grid ----------------------------------------------------
def test_grid_columns_are_engine_protocols_and_cells_are_consistent(tiny, tmp_path):
    from clip_robust_ext.evaluation import get_protocol

    proto = get_protocol("saft-ensemble", descriptions="shapes-descriptions", steps=3)
    assert proto.templates == "shapes-descriptions"
    assert [a["label"] for a in proto.attacks] == ["pgd-template", "semantic-ensemble"]
    with pytest.raises(ClipxUsageError, match="descriptions"):
        get_protocol("saft-ensemble")
    settings = dict(
        k=2,
        steps=2,
        alpha="2/255",
        eps=["8/255"],
        n_samples=12,
        batch_size=6,
        datasets=[{"dataset": "procedural-shapes", "split": "test", "n": 12}],
    )
    records = evaluate_grid(tiny, tmp_path, "tiny", descriptions="shapes-descriptions", **settings)
    assert sorted(r["protocol"] for r in records) == ["saft-ensemble", "saft-template"]
    (cell,) = grid_cells(records).values()
    zs = ZeroShotClassifier(tiny, list(SHAPES))
    ds = get("datasets", "procedural-shapes").obj(split="test")
    from clip_robust_ext.data import sample_indices

    idx = sample_indices(len(ds), 12, 0)
    x, y = torch.stack([ds[i][0] for i in idx]), torch.tensor([ds[i][1] for i in idx])
    with torch.no_grad():
        clean = 100 * (zs(x).argmax(1) == y).float().mean().item()
    assert cell["clean"]["template"] == pytest.approx(clean, abs=1e-3)
    for text in ("template", "ensemble"):
        for attack in ("template", "ensemble"):
            assert 0 <= cell["robust"][attack][text] <= cell["clean"][text]
    assert "| template |" in grid_markdown(records)


# -- recipe and command ------------------------------------------------------------------------
@pytest.mark.parametrize("profile", [None, "cifar10", "paper"])
def test_recipe_profiles_resolve(profile):
    from clip_robust_ext.recipes import resolve

    doc = resolve("saft", profile).doc
    assert doc["defense"]["name"] == "saft"
    assert [b["name"] for b in doc["baselines"]] == ["tecoa", "tga-zsr"]
    if profile == "paper":
        assert (
            doc["defense"]["train"]["lr"] == 1e-4 and doc["defense"]["train"]["batch_size"] == 128
        )
        assert (
            doc["evaluate"]["protocol"] == "tecoa-16" and "max_steps" not in doc["defense"]["train"]
        )
    else:
        assert doc["evaluate"]["protocol"] == "saft-template"


def test_saft_fails_fast_on_a_missing_description_file(tmp_path):
    with pytest.raises(ClipxUsageError, match="not found"):
        SAFT(descriptions=str(tmp_path / "cupl.json"))


def test_descriptions_command_lists_the_sets():
    from click.testing import CliRunner

    from clip_robust_ext.cli import cli

    out = CliRunner().invoke(cli, ["saft", "descriptions"])
    assert out.exit_code == 0, out.output
    assert "cifar100-descriptions\t100 classes, 10-10 per class" in out.output


def test_saft_trains_with_the_trainer_engine(tmp_path):
    from clip_robust_ext.data import ProceduralShapes
    from clip_robust_ext.training.trainer import train

    loaded = tiny_clip(seed=1)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    ds = ProceduralShapes(split="train", n=32, seed=0)
    defense = get("defenses", "saft").obj(eps="4/255", alpha="2/255", steps=1, k=3)
    train(
        loaded,
        defense,
        ds,
        {"max_steps": 2, "batch_size": 16, "lr": 1e-2},
        tmp_path,
        progress=False,
    )
    after = loaded.model.state_dict()
    assert not torch.equal(before["visual.conv1.weight"], after["visual.conv1.weight"])
    assert torch.equal(before["token_embedding.weight"], after["token_embedding.weight"])
    # the logit-scale clamp after each step must not make the descriptions be re-encoded
    assert defense._attack.bank.text_calls == 1
    written = json.loads((tmp_path / "descriptions.json").read_text())
    assert written["descriptions"] == "shapes-descriptions" and len(written["classes"]["star"]) == 3
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"ce", "attn_adv", "attn_clean"} <= set(metrics[-1])
