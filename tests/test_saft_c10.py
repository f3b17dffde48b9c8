"""SAFT on the real small CIFAR-10 CLIP (slow): the semantic-ensemble attack with the shipped
CIFAR-10 descriptions fools the description-ensemble head, and template-PGD examples are
scored consistently by the grid protocol."""

from __future__ import annotations

import pytest
import torch
from helpers import CIFAR10_CLASSES, cifar10_batch, small_c10

from clip_robust_ext.attacks import build_attack, verify_adversarial
from clip_robust_ext.models import ZeroShotClassifier

pytestmark = pytest.mark.slow


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_semantic_ensemble_attack_fools_the_description_ensemble():
    zs = ZeroShotClassifier(small_c10(), CIFAR10_CLASSES)
    x, y = cifar10_batch(64, seed=1)
    atk = build_attack("semantic-ensemble", zs, eps="2/255", alpha="1/255", steps=5, k=5)
    ens = zs.with_prompts(atk.impl.class_descriptions.ensemble_prompts())
    assert atk.impl.info["descriptions"] == "cifar10-descriptions" and not atk.impl.info["fallback"]
    clean = _acc(ens, x, y)
    torch.manual_seed(0)
    x_adv = atk(x, y).images
    verify_adversarial(x, x_adv, 2 / 255)
    assert clean > 0.45
    assert _acc(ens, x_adv, y) < clean - 0.3
    assert _acc(zs, x_adv, y) < _acc(zs, x, y) - 0.3  # it transfers to the template head
