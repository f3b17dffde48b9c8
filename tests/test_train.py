"""Trainer engine: config, parameter selection, schedule, data order, loop behaviour (tiny models)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_clip
from torch.utils.data import Subset

from clip_robust_ext.data import ProceduralShapes
from clip_robust_ext.errors import ClipxError, ClipxUsageError
from clip_robust_ext.training import Defense, TrainConfig, load_checkpoint, train
from clip_robust_ext.training.distributed import ShardedBatchSampler, epoch_order
from clip_robust_ext.training.schedule import lr_factor, set_trainable, trainable_names
from clip_robust_ext.training.trainer import caption_function


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # the CI machine is shared: one thread is faster than two contended ones for tiny models
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return ProceduralShapes("train", n=48, seed=1)


class CleanCE(Defense):
    """CE of the zero-shot logits on clean images: a deterministic loss for engine tests."""

    name = "clean-ce"
    trainable = "visual"

    def __init__(self):
        self.seen = []

    def loss(self, batch, ctx):
        self.seen.append((ctx.step, batch.index.tolist(), list(batch.captions)))
        logits = ctx.model(batch.images)
        return F.cross_entropy(logits, batch.labels), {
            "acc": (logits.argmax(1) == batch.labels).float().mean()
        }


def test_config_validation_and_defaults():
    with pytest.raises(ClipxUsageError, match="did you mean 'epochs'"):
        TrainConfig.from_dict({"epoch": 2})
    with pytest.raises(ClipxUsageError, match="optimizer"):
        TrainConfig(optimizer="lamb")
    with pytest.raises(ClipxUsageError, match="trainable"):
        TrainConfig(trainable="last-k:0")
    with pytest.raises(ClipxUsageError, match="amp"):
        TrainConfig(amp="fp8")

    class WithDefaults(Defense):
        trainable = "both"
        train_defaults = {"optimizer": "adamw", "lr": 3e-4}

    cfg = TrainConfig(lr=1e-2).resolved(WithDefaults())
    assert (cfg.optimizer, cfg.lr, cfg.trainable, cfg.momentum) == ("adamw", 1e-2, "both", 0.9)
    assert TrainConfig(trainable="visual").resolved(WithDefaults()).trainable == "visual"


def test_trainable_selection():
    model = tiny_clip().model
    visual = trainable_names(model, "visual")
    text = trainable_names(model, "text")
    assert visual and all(n.startswith("visual.") for n in visual)
    assert (
        "logit_scale" in text and "token_embedding.weight" in text and not set(visual) & set(text)
    )
    assert set(trainable_names(model, "both")) == set(visual) | set(text)
    last = trainable_names(model, "last-k:1")
    assert any(".resblocks.1." in n for n in last) and not any(".resblocks.0." in n for n in last)
    assert "visual.proj" in last and "visual.conv1.weight" not in last
    with pytest.raises(ClipxUsageError, match="only 2 blocks"):
        trainable_names(model, "last-k:3")
    params = set_trainable(model, "text")
    assert len(params) == len(text) and not model.visual.conv1.weight.requires_grad


def test_weight_decay_skips_gains_unless_decay_all_params():
    """open_clip's rule by default; MMCoA's code decays every parameter (Adam wd 0.2)."""
    from clip_robust_ext.training.schedule import build_optimizer

    model = tiny_clip(0).model
    n_params = sum(1 for p in model.parameters() if p.requires_grad)
    base = dict(optimizer="adam", lr=1e-6, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    split = build_optimizer(model, TrainConfig(**base))
    assert [g["weight_decay"] for g in split.param_groups] == [0.2, 0.0]
    assert model.logit_scale in split.param_groups[1]["params"]
    everything = build_optimizer(model, TrainConfig(**base, decay_all_params=True))
    assert [(g["weight_decay"], len(g["params"])) for g in everything.param_groups] == [
        (0.2, n_params)
    ]
    with pytest.raises(ClipxUsageError, match="decay_all_params"):
        TrainConfig(decay_all_params="yes")


def test_cosine_schedule_with_warmup():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 10, "cosine") < 0.01
    assert lr_factor(50, 100, 10, "constant") == 1.0


def test_sharded_order_is_global_batch_split_and_resumable():
    one = list(ShardedBatchSampler(50, 8, seed=3, epoch=1))
    r0 = list(ShardedBatchSampler(50, 8, seed=3, epoch=1, rank=0, world_size=2))
    r1 = list(ShardedBatchSampler(50, 8, seed=3, epoch=1, rank=1, world_size=2))
    assert len(one) == 6 and [a + b for a, b in zip(r0, r1)] == one
    assert list(ShardedBatchSampler(50, 8, seed=3, epoch=1, start_step=4)) == one[4:]
    assert not torch.equal(epoch_order(50, 3, 1), epoch_order(50, 3, 2))
    with pytest.raises(ClipxUsageError, match="divisible"):
        ShardedBatchSampler(50, 9, seed=0, epoch=0, world_size=2)


def test_captions_from_dataset_or_templates(data):
    own = caption_function(data, data.classnames, ["a {}"])
    assert own(5, data[5][1]) == data.caption(5)
    sub = Subset(data, range(10))
    templated = caption_function(sub, data.classnames, ["a {}.", "the {}!"])
    caps = [templated(i, 2) for i in range(40)]
    assert set(caps) == {"a square.", "the square!"} and caps == [
        templated(i, 2) for i in range(40)
    ]


def test_train_logs_checkpoints_and_learns(tmp_path, data):
    loaded = tiny_clip()
    start = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    defense = CleanCE()
    cfg = TrainConfig(epochs=3, batch_size=16, lr=5e-3, optimizer="adamw", checkpoint_every=4)
    out = train(loaded, defense, data, cfg, tmp_path, progress=False)
    assert out is loaded
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 10)) and {
        "loss",
        "acc",
        "lr",
        "epoch",
    } <= set(records[0])
    assert records[-1]["loss"] < records[0]["loss"]
    # epochs: each sample exactly once per epoch, order changes between epochs
    per_epoch = [
        sorted(i for s, idx, _ in defense.seen[e * 3 : (e + 1) * 3] for i in idx) for e in range(3)
    ]
    assert all(p == list(range(48)) for p in per_epoch)
    assert defense.seen[0][1] != defense.seen[3][1]
    # only the vision tower moved; flags restored; eval mode
    state = loaded.model.state_dict()
    assert not torch.equal(state["visual.conv1.weight"], start["visual.conv1.weight"])
    assert torch.equal(state["token_embedding.weight"], start["token_embedding.weight"])
    assert all(p.requires_grad for p in loaded.model.parameters()) and not loaded.model.training
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 9 and ckpt["epoch"] == 3 and ckpt["step_in_epoch"] == 0
    assert (tmp_path / "final.pt").is_file()

    # re-running a finished run loads it and returns without training
    again = tiny_clip(seed=7)
    defense2 = CleanCE()
    train(again, defense2, data, cfg, tmp_path, progress=False)
    assert not defense2.seen
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in state.items())
    # a different setup in the same run directory is refused
    with pytest.raises(ClipxUsageError, match="different training setup"):
        train(
            tiny_clip(),
            CleanCE(),
            data,
            TrainConfig(epochs=3, batch_size=16, lr=1e-3),
            tmp_path,
            progress=False,
        )


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, data):
    class Explodes(CleanCE):
        def loss(self, batch, ctx):
            loss, m = super().loss(batch, ctx)
            return (loss * float("nan") if ctx.step == 2 else loss), m

    with pytest.raises(ClipxError, match=r"non-finite loss .* at step 3.*step 2"):
        train(
            tiny_clip(),
            Explodes(),
            data,
            TrainConfig(max_steps=6, batch_size=8, checkpoint_every=2),
            tmp_path,
            progress=False,
        )
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2
    assert not (tmp_path / "final.pt").exists()


def test_amp_keeps_attacks_fp32_and_clamps_logit_scale(tmp_path, data):
    loaded = tiny_clip()
    with torch.no_grad():
        loaded.model.logit_scale.fill_(math.log(400.0))
    seen = []

    class AttackInside(Defense):
        name = "attack-inside"
        trainable = "both"

        def loss(self, batch, ctx):
            seen.clear()
            hook = ctx.model.clip.visual.register_forward_hook(
                lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), o.dtype))
            )
            try:
                x_adv = ctx.attack("pgd", eps="1/255", alpha="1/255", steps=1)(
                    batch.images, batch.labels
                ).images
                n_attack = len(seen)
                logits = ctx.model(x_adv)
            finally:
                hook.remove()
            assert n_attack >= 1 and all(
                not amp and dt == torch.float32 for amp, dt in seen[:n_attack]
            )
            assert seen[-1] == (True, torch.bfloat16)
            return F.cross_entropy(logits, batch.labels), {}

    train(
        loaded,
        AttackInside(),
        data,
        TrainConfig(max_steps=2, batch_size=8, amp="bf16", lr=1e-3),
        tmp_path,
        progress=False,
    )
    assert seen and loaded.model.logit_scale.item() <= math.log(100.0) + 1e-6


def test_reference_is_frozen_start_model(tmp_path, data):
    captured = {}

    class UsesReference(CleanCE):
        needs_reference = True

        def loss(self, batch, ctx):
            assert not ctx.reference.training
            assert not any(p.requires_grad for p in ctx.reference.parameters())
            captured["ref"] = ctx.reference.clip.visual.conv1.weight
            return super().loss(batch, ctx)

    loaded = tiny_clip()
    start = loaded.model.visual.conv1.weight.detach().clone()
    train(
        loaded,
        UsesReference(),
        data,
        TrainConfig(max_steps=3, batch_size=8, lr=1e-2, grad_clip=1.0),
        tmp_path,
        progress=False,
    )
    assert torch.equal(captured["ref"], start)
    assert not torch.equal(loaded.model.visual.conv1.weight, start)


def test_unknown_defense_name(tmp_path, data):
    with pytest.raises(ClipxUsageError, match="unknown defense"):
        train(tiny_clip(), "tecao", data, None, tmp_path, progress=False)


def test_periodic_evaluation_through_the_engine(tmp_path, data):
    from clip_robust_ext.evaluation import Protocol
    from clip_robust_ext.training import evaluation_callback

    protocol = Protocol(
        name="tiny-pgd",
        attacks=[{"name": "pgd", "steps": 1}],
        eps=["1/255"],
        n_samples=16,
        templates=["a {}"],
        datasets=[{"dataset": "procedural-shapes", "split": "test", "n": 16}],
        batch_size=16,
    )
    cfg = TrainConfig(max_steps=4, batch_size=8, lr=1e-3, eval_every=2)
    train(
        tiny_clip(),
        CleanCE(),
        data,
        cfg,
        tmp_path,
        eval_fn=evaluation_callback(protocol, tmp_path),
        progress=False,
    )
    evals = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert {"clean_acc", "robust_acc"} <= set(evals[0]["eval"][0])


def test_channels_last_trains_in_that_layout_and_gives_the_eager_losses(tmp_path, data):
    """TrainConfig.channels_last: the image tower's weights are channels_last during the steps
    (the option is in effect), the losses are eager's up to kernel round-off, and the weights
    are back in the contiguous layout afterwards."""
    layouts: list[bool] = []

    def record(loaded, step):
        w = loaded.model.visual.conv1.weight
        layouts.append(w.is_contiguous(memory_format=torch.channels_last) and w.shape[-1] > 1)

    losses = {}
    for option in (False, True):
        loaded = tiny_clip()
        run = tmp_path / str(option)
        config = TrainConfig(max_steps=3, batch_size=8, lr=1e-3, eval_every=1, channels_last=option)
        train(loaded, CleanCE(), data, config, run, eval_fn=record, progress=False)
        lines = (run / "metrics.jsonl").read_text().splitlines()
        losses[option] = [json.loads(x)["loss"] for x in lines if '"loss"' in x]
        assert loaded.model.visual.conv1.weight.is_contiguous()
    assert layouts == [False] * 3 + [True] * 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)
    with pytest.raises(ClipxUsageError, match="channels_last"):
        TrainConfig(channels_last="yes")
