"""torchattacks and AutoAttack attack ZeroShotClassifier as is; no text is encoded per forward."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import CIFAR10_CLASSES, cifar10_batch, small_c10

from clip_robust_ext.attacks import attack_mode, build_attack, verify_adversarial
from clip_robust_ext.errors import AdversarialCheckError
from clip_robust_ext.models import ZeroShotClassifier


@pytest.fixture(scope="module")
def c10():
    zs = ZeroShotClassifier(small_c10(), CIFAR10_CLASSES).eval()
    zs.class_matrix()  # the text tower runs here, once, whichever test comes first
    x, y = cifar10_batch(64, seed=0)
    return zs, x, y


def _acc(zs, x, y) -> float:
    with torch.no_grad():
        return (zs(x).argmax(1) == y).float().mean().item()


def test_torchattacks_pgd_lowers_accuracy_without_text_encoding(c10):
    import torchattacks

    zs, x, y = c10
    clean = _acc(zs, x, y)
    calls = zs.text_calls
    atk = torchattacks.PGD(zs, eps=4 / 255, alpha=1 / 255, steps=10)  # the classifier, as is
    torch.manual_seed(0)
    x_adv = atk(x, y)
    verify_adversarial(x, x_adv, 4 / 255)
    assert zs.text_calls == calls, "PGD must not run the text tower"
    assert clean > 0.4
    assert _acc(zs, x_adv, y) < clean - 0.3


def test_pyautoattack_apgd_ce_lowers_accuracy(c10):
    from pyautoattack import AutoAttack

    zs, x, y = c10
    calls = zs.text_calls
    adversary = AutoAttack(
        zs, attacks=["apgd-ce"], version="custom", eps=2 / 255, seed=0, device="cpu"
    )
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=64)
    verify_adversarial(x, x_adv, 2 / 255)
    assert zs.text_calls == calls
    assert _acc(zs, x_adv, y) < _acc(zs, x, y) - 0.3


def test_registered_attack_restores_mode_and_grad_flags(c10):
    zs, x, y = c10
    original = {n: p.requires_grad for n, p in zs.named_parameters()}
    zs.train()
    zs.clip.visual.conv1.weight.requires_grad_(True)
    zs.clip.token_embedding.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in zs.named_parameters()}
    atk = build_attack("pgd", zs, eps="1/255", alpha="1/255", steps=2)
    out = atk(x[:8], y[:8])
    verify_adversarial(x[:8], out.images, atk.eps, atk.norm)
    assert zs.training
    assert zs.clip.visual.conv1.weight.requires_grad
    assert not zs.clip.token_embedding.weight.requires_grad
    with attack_mode(zs):
        assert not zs.training
        assert not any(p.requires_grad for p in zs.parameters())
    assert flags == {n: p.requires_grad for n, p in zs.named_parameters()}
    zs.eval()  # leave the shared model as it was
    for n, p in zs.named_parameters():
        p.requires_grad_(original[n])


def test_integrity_check_names_the_attack():
    x = torch.rand(2, 3, 4, 4) * 0.5
    with pytest.raises(AdversarialCheckError, match="bad-attack: Linf distance"):
        verify_adversarial(x, x + 0.1, 4 / 255, attack="bad-attack")
    with pytest.raises(AdversarialCheckError, match=r"outside \[0, 1\]"):
        verify_adversarial(x, x - 1, 4 / 255)
    with pytest.raises(AdversarialCheckError, match="non-finite"):
        verify_adversarial(x, x * float("nan"), 4 / 255)


def test_import_is_offline_and_light():
    code = (
        "import sys, socket\n"
        "def no_net(*a, **k): raise RuntimeError('network touched')\n"
        "socket.socket.connect = no_net\n"
        "import clip_robust_ext, clip_robust_ext.models, clip_robust_ext.attacks\n"
        "assert 'textattack' not in sys.modules, 'textattack imported eagerly'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
