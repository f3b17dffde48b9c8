"""LAAT CLIP mode (the `laat` defense) and the `clipx laat` commands."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from clipx_laat.defense import LAAT
from clipx_laat.expansion import mean_pairwise_cosine
from helpers import tiny_clip

from clip_robust_ext.data import ProceduralShapes
from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.models import ZeroShotClassifier
from clip_robust_ext.registry import get
from clip_robust_ext.training import Batch, TrainContext

SHAPES = ProceduralShapes(split="test", n=10, seed=0).classnames


def _ctx(loaded, classes):
    zs = ZeroShotClassifier(loaded, classes, ["a photo of a {}."])
    return TrainContext(
        model=zs,
        reference=None,
        classnames=classes,
        templates=["a photo of a {}."],
        device=torch.device("cpu"),
    )


def _batch(n: int) -> Batch:
    ds = ProceduralShapes(split="train", n=n, seed=0, image_size=32)
    xs, ys = zip(*[ds[i] for i in range(n)])
    return Batch(torch.stack(xs), torch.tensor(ys), [""] * n)


def test_registered_with_its_parameters():
    entry = get("defenses", "laat")
    d = entry.obj(eps="2/255", tau=0.5, beta=0.0, expand=False)
    assert isinstance(d, LAAT) and d.trainable == "visual" and not d.needs_reference
    assert d.config() == {
        "eps": "2/255",
        "alpha": "1/255",
        "steps": 2,
        "tau": 0.5,
        "beta": 0.0,
        "expand": False,
    }
    for bad in ({"tau": 0}, {"beta": -1}, {"steps": 0}, {"expand": "yes"}, {"eps": "3"}):
        with pytest.raises(ClipxUsageError):
            LAAT(**bad)


def test_setup_builds_expanded_anchors_from_the_frozen_text_tower():
    loaded = tiny_clip(0)
    ctx = _ctx(loaded, list(SHAPES))
    d = LAAT()
    d.setup(ctx)
    raw = ctx.model.class_matrix()
    assert d.anchors.shape == raw.shape
    assert mean_pairwise_cosine(d.anchors) < mean_pairwise_cosine(raw)
    plain = LAAT(expand=False)
    plain.setup(ctx)
    assert torch.allclose(plain.anchors, raw, atol=1e-6)


def test_loss_trains_only_the_image_tower_and_attacks_the_anchor_head():
    loaded = tiny_clip(0)
    ctx = _ctx(loaded, list(SHAPES))
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    for p in loaded.model.visual.parameters():
        p.requires_grad_(True)
    d = LAAT(eps="4/255", alpha="2/255", steps=2)
    d.setup(ctx)
    ctx.model.train()
    loss, metrics = d.loss(_batch(6), ctx)
    assert torch.isfinite(loss) and {
        "ace",
        "smooth",
        "adv_acc",
        "anchor_cos_raw",
        "anchor_cos_expanded",
    } <= set(metrics)
    assert metrics["anchor_cos_expanded"] < metrics["anchor_cos_raw"]
    assert ctx.model.training  # the attack restored train mode
    loss.backward()
    assert loaded.model.visual.conv1.weight.grad.abs().sum() > 0
    assert loaded.model.token_embedding.weight.grad is None
    built = [k for k in ctx._attacks if k[0] == "pgd"]
    assert built and built[0][1] == id(
        d._head
    )  # PGD maximises the anchor-head CE, not CLIP's logits


def test_trainer_runs_laat_and_keeps_the_text_tower(tmp_path):
    from clip_robust_ext.training.trainer import train

    loaded = tiny_clip(1)
    text_before = loaded.model.token_embedding.weight.detach().clone()
    visual_before = loaded.model.visual.conv1.weight.detach().clone()
    ds = ProceduralShapes(split="train", n=16, seed=0, image_size=32)
    train(
        loaded,
        LAAT(eps="4/255", alpha="2/255", steps=1),
        ds,
        {"max_steps": 2, "batch_size": 8, "lr": 1e-2},
        tmp_path,
        templates=["a photo of a {}."],
        progress=False,
    )
    assert torch.equal(loaded.model.token_embedding.weight, text_before)
    assert not torch.equal(loaded.model.visual.conv1.weight, visual_before)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("ace" in json.dumps(r) for r in rows)


def test_cli_paper_show_and_profiles():
    from clip_robust_ext.cli import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["laat", "paper", "--profile", "smoke", "--set", "epochs=3", "--show"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["epochs"] == 3 and doc["width"] == 8 and doc["backbone"] == "conv4"
    res = runner.invoke(cli, ["laat", "paper", "--profile", "papr", "--show"])
    assert res.exit_code == 2 and "did you mean 'paper'" in res.output
    res = runner.invoke(cli, ["laat", "paper", "--set", "epoch=3", "--show"])
    assert res.exit_code == 2 and "did you mean 'epochs'" in res.output
    for profile in ("default", "paper", "resnet12"):
        res = runner.invoke(cli, ["laat", "paper", "--profile", profile, "--show"])
        assert res.exit_code == 0, res.output


def test_recipe_resolves_with_laat_and_tecoa():
    from clip_robust_ext.recipes import resolve

    for profile in (None, "paper"):
        r = resolve("laat", profile)
        names = [m["name"] for m in r.methods]
        assert "laat" in names and "tecoa" in names
