"""Gaussian noise augmentation (`gaussian-aug`): the loss is zero-shot CE on noisy images, and
training moves the vision tower only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_clip

from clip_robust_ext import get, names
from clip_robust_ext.data import ProceduralShapes
from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.models import ZeroShotClassifier
from clip_robust_ext.training import Batch, TrainConfig, TrainContext, train
from clip_robust_ext.training.trainer import fp32_attack_builder


def _batch(n: int = 8):
    data = ProceduralShapes("train", n=n, seed=0)
    xs, ys = zip(*(data[i] for i in range(n)))
    captions = [data.caption(i) for i in range(n)]
    return data, Batch(torch.stack(xs), torch.tensor(ys), captions, torch.arange(n))


def test_registered_with_sigma_and_rejects_bad_sigma():
    assert "gaussian-aug" in names("defenses")
    defense = get("defenses", "gaussian-aug").obj(sigma=0.5)
    assert (defense.sigma, defense.trainable, defense.config()) == (0.5, "visual", {"sigma": 0.5})
    for bad in (0, -0.1, "0.25", True):
        with pytest.raises(ClipxUsageError, match="sigma"):
            get("defenses", "gaussian-aug").obj(sigma=bad)


def test_loss_is_zero_shot_ce_on_images_plus_sigma_gaussian_noise():
    data, batch = _batch()
    zs = ZeroShotClassifier(tiny_clip(0), data.classnames).eval()
    ctx = TrainContext(
        model=zs,
        reference=None,
        classnames=data.classnames,
        templates=zs.templates,
        device=torch.device("cpu"),
        build_attack=fp32_attack_builder,
    )
    defense = get("defenses", "gaussian-aug").obj(sigma=0.5)
    torch.manual_seed(3)
    loss, metrics = defense.loss(batch, ctx)
    torch.manual_seed(3)
    noisy = batch.images + 0.5 * torch.randn_like(batch.images)
    with torch.no_grad():
        expected = F.cross_entropy(zs(noisy), batch.labels)
        clean = F.cross_entropy(zs(batch.images), batch.labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(clean.item(), rel=1e-3)  # the noise is really there
    assert 0.0 <= metrics["noisy_acc"].item() <= 1.0


def test_training_changes_the_vision_tower_only(tmp_path):
    data = ProceduralShapes("train", n=16, seed=0)
    loaded = tiny_clip(0)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    config = TrainConfig(max_steps=2, batch_size=8, lr=1e-2)
    train(loaded, "gaussian-aug", data, config, tmp_path, progress=False)
    after = loaded.model.state_dict()
    assert not torch.equal(before["visual.conv1.weight"], after["visual.conv1.weight"])
    assert torch.equal(before["token_embedding.weight"], after["token_embedding.weight"])
    assert (tmp_path / "metrics.jsonl").read_text().count("noisy_acc") == 2
