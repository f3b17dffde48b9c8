"""The MMCoA defense: loss terms, caption-attack cache, class-aware targets, Trainer integration."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_clip

from clip_robust_ext import get
from clip_robust_ext.data import ProceduralShapes
from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.models import ZeroShotClassifier
from clip_robust_ext.training import Batch, TrainContext, clip_contrastive_loss


@pytest.fixture(scope="module")
def data():
    ds = ProceduralShapes("train", n=8, seed=0)
    images = torch.stack([ds[i][0] for i in range(8)])
    labels = torch.tensor([ds[i][1] for i in range(8)])
    return ds, Batch(images, labels, [ds.caption(i) for i in range(8)], torch.arange(8))


def _ctx(classnames, seed=0):
    zs = ZeroShotClassifier(tiny_clip(seed), classnames, ["a photo of a {}."])
    return TrainContext(
        model=zs,
        reference=None,
        classnames=list(classnames),
        templates=["a photo of a {}."],
        device=torch.device("cpu"),
    )


def _mmcoa(**params):
    return get("defenses", "mmcoa").obj(
        transformation="charswap", steps=2, eps="2/255", alpha="1/255", **params
    )


def test_loss_trains_both_towers_and_reports_both_terms(data):
    ds, batch = data
    ctx = _ctx(ds.classnames)
    defense = _mmcoa()
    assert defense.trainable == "both" and defense.train_defaults["optimizer"] == "adam"
    ctx.model.train()
    loss, metrics = defense.loss(batch, ctx)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(
        0.5 * metrics["loss_img"] + 0.5 * metrics["loss_txt"], rel=1e-5
    )
    assert 0 < metrics["captions_perturbed"] <= 1 and metrics["caption_kl"] > 0
    loss.backward()
    clip = ctx.model.clip
    assert (
        clip.visual.conv1.weight.grad is not None and clip.visual.conv1.weight.grad.abs().sum() > 0
    )
    assert (
        clip.token_embedding.weight.grad is not None
        and clip.token_embedding.weight.grad.abs().sum() > 0
    )


def test_text_term_uses_adversarial_captions_and_image_term_adversarial_images(data):
    ds, batch = data
    ctx = _ctx(ds.classnames)
    defense = _mmcoa(lambda_img=0.0, lambda_txt=1.0)
    loss, metrics = defense.loss(batch, ctx)
    records = defense._captions(batch.captions)
    adv = [r.perturbed for r in records]
    assert adv != batch.captions
    with torch.no_grad():
        m = ctx.model
        expected = 2 * clip_contrastive_loss(
            m.encode_image(batch.images), m.encode_text(adv), m.logit_scale()
        )
        clean_text = 2 * clip_contrastive_loss(
            m.encode_image(batch.images), m.encode_text(batch.captions), m.logit_scale()
        )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(clean_text.item(), rel=1e-5)


def test_captions_are_attacked_once_per_string_per_epoch(data):
    ds, batch = data
    ctx = _ctx(ds.classnames)
    defense = _mmcoa()
    defense.loss(batch, ctx)
    attacker = defense._captions.attacker
    first = attacker.textattack_calls
    assert first == len(set(batch.captions))
    ctx.step += 1
    defense.loss(batch, ctx)
    assert attacker.textattack_calls == first
    ctx.epoch += 1  # a new epoch re-attacks against the current weights
    defense.loss(batch, ctx)
    assert attacker.textattack_calls == 2 * first

    every = _mmcoa(text_refresh_steps=1)
    every.loss(batch, ctx)
    ctx.step += 1
    every.loss(batch, ctx)
    assert every._captions.attacker.textattack_calls == 2 * first


def test_class_aware_targets_make_same_class_pairs_positives(data):
    ds = ProceduralShapes("train", n=14, seed=0)
    idx = [0, 1, 2, 3, 10, 11, 12, 13]  # two images of each of 4 classes
    dup = Batch(
        torch.stack([ds[i][0] for i in idx]),
        torch.tensor([ds[i][1] for i in idx]),
        [ds.caption(i) for i in idx],
    )
    assert dup.labels.tolist() == [0, 1, 2, 3] * 2
    ctx = _ctx(ds.classnames)
    aware = _mmcoa(class_aware=True, lambda_img=0.0, lambda_txt=1.0)
    loss, _ = aware.loss(dup, ctx)
    adv = [r.perturbed for r in aware._captions(dup.captions)]
    m = ctx.model
    with torch.no_grad():
        img, txt, scale = m.encode_image(dup.images), m.encode_text(adv), m.logit_scale()
        with_classes = 2 * clip_contrastive_loss(img, txt, scale, dup.labels)
        identity = 2 * clip_contrastive_loss(img, txt, scale)
    assert loss.item() == pytest.approx(with_classes.item(), rel=1e-5)
    assert abs(with_classes.item() - identity.item()) > 1e-4


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lamda_img": 0.5}, "did you mean 'lambda_img'"),
        ({"steps": 0}, "steps"),
        ({"transformation": "bert"}, "transformation"),
        ({"class_aware": "yes"}, "class_aware"),
        ({"lambda_txt": -1}, "lambda_txt"),
    ],
)
def test_bad_parameters_are_usage_errors(params, message):
    with pytest.raises(ClipxUsageError, match=message):
        get("defenses", "mmcoa").obj(**params)


def test_trainer_runs_mmcoa_on_both_towers(tmp_path):
    from clip_robust_ext.training import TrainConfig, train

    torch.manual_seed(0)
    loaded = tiny_clip(seed=2)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    ds = ProceduralShapes("train", n=16, seed=0)
    defense = _mmcoa()
    train(
        loaded,
        defense,
        ds,
        TrainConfig(max_steps=2, batch_size=8, lr=1e-4),
        tmp_path,
        progress=False,
    )
    after = loaded.model.state_dict()
    assert not torch.equal(before["visual.conv1.weight"], after["visual.conv1.weight"])
    assert not torch.equal(before["token_embedding.weight"], after["token_embedding.weight"])
    assert (tmp_path / "metrics.jsonl").read_text().count("loss_txt") == 2


def test_leak_option_adds_every_attack_steps_gradients_to_the_step(data):
    """MMCoA's code runs its training PGD with backward() on the unfrozen model: with
    leak_attack_gradients the parameters' gradients differ from the clean ones by exactly the
    sum over the PGD iterates of d CE(zero-shot logits) / d theta (written here)."""
    import torch.nn.functional as F

    ds, batch = data
    eps, alpha, steps = 2 / 255, 1 / 255, 2
    grads, losses = {}, {}
    for leak in (False, True):
        ctx = _ctx(ds.classnames)
        ctx.model.train()
        torch.manual_seed(0)
        loss, _ = _mmcoa(leak_attack_gradients=leak).loss(batch, ctx)
        loss.backward()
        losses[leak] = loss.detach()
        grads[leak] = {n: p.grad.clone() for n, p in ctx.model.clip.named_parameters()}
    torch.testing.assert_close(losses[True], losses[False])  # same x_adv, same objective

    ctx = _ctx(ds.classnames)
    model = ctx.model.train()
    named = [(n, p) for n, p in model.clip.named_parameters()]
    leaked = {n: torch.zeros_like(p) for n, p in named}
    prompts = [p[0] for p in model.prompts]
    torch.manual_seed(0)
    x = batch.images
    adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        text = F.normalize(model.clip.encode_text(model.tokenize(prompts)), dim=-1)
        image = F.normalize(model.encode_image(adv, normalize=False), dim=-1)
        ce = F.cross_entropy(model.clip.logit_scale.exp() * image @ text.t(), batch.labels)
        g = torch.autograd.grad(ce, [adv, *(p for _, p in named)], allow_unused=True)
        for (n, _), gp in zip(named, g[1:]):
            if gp is not None:
                leaked[n] += gp
        adv = (x + (adv.detach() + alpha * g[0].sign() - x).clamp(-eps, eps)).clamp(0, 1)
    for n, _ in named:
        torch.testing.assert_close(
            grads[True][n] - grads[False][n], leaked[n], rtol=1e-3, atol=1e-6, msg=n
        )
    assert leaked["token_embedding.weight"].abs().sum() > 0  # both towers leak
    assert leaked["visual.conv1.weight"].abs().sum() > 0


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_leak_is_refused_under_fp16_where_the_scaler_would_shrink_it(tmp_path, amp):
    """Under fp16 the Trainer's GradScaler scales the loss, not the attack's backward(), and then
    divides every gradient by its scale: the leaked attack gradients would reach the step ~65536x
    smaller than in the reference's fp32. bf16 has no scaler, so the leak arrives unscaled."""
    from clip_robust_ext.training import TrainConfig, train

    loaded = tiny_clip(seed=2)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    ds = ProceduralShapes("train", n=8, seed=0)
    config = TrainConfig(max_steps=1, batch_size=8, lr=1e-4, amp=amp)
    run = lambda: train(  # noqa: E731
        loaded, _mmcoa(leak_attack_gradients=True), ds, config, tmp_path, progress=False
    )
    if amp == "fp16":
        with pytest.raises(ClipxUsageError, match="leak_attack_gradients needs amp"):
            run()
        after = loaded.model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # refused before any step
    else:
        run()
        assert not torch.equal(
            before["visual.conv1.weight"], loaded.model.state_dict()["visual.conv1.weight"]
        )
