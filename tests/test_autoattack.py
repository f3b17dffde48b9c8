"""AutoAttack adapter: fra31 settings, class-count handling, backends, and exact agreement with
calling pyautoattack directly on the same model, samples and seed."""

from __future__ import annotations

import pytest
import torch
from helpers import CIFAR10_CLASSES, assets, cifar10_batch, small_c10

from clip_robust_ext import ClipxUsageError, get, verify_adversarial
from clip_robust_ext.attacks import attack_mode, build_attack
from clip_robust_ext.attacks.autoattack_adapter import AutoAttackAdapter
from clip_robust_ext.evaluation import Protocol, evaluate
from clip_robust_ext.models import ZeroShotClassifier


@pytest.fixture(scope="module")
def c10():
    assets()
    return small_c10()


def test_registered_with_protocol_params():
    entry = get("attacks", "autoattack")
    assert entry.modality == "image"
    assert set(entry.protocol_params) == {"norm", "seed", "backend"}


@pytest.mark.parametrize(
    "n_classes, attacks, targets, dropped",
    [
        (2, ["apgd-ce"], 1, ["apgd-t"]),
        (3, ["apgd-ce"], 2, ["apgd-t"]),
        (5, ["apgd-ce", "apgd-t"], 4, []),
        (10, ["apgd-ce", "apgd-t"], 9, []),
        (1000, ["apgd-ce", "apgd-t"], 9, []),
    ],
)
def test_fra31_settings_per_class_count(n_classes, attacks, targets, dropped):
    adapter = AutoAttackAdapter(torch.nn.Linear(2, n_classes), eps="1/255")
    cfg = adapter.settings(n_classes)
    assert cfg["attacks"] == attacks and cfg["dropped"] == dropped
    assert cfg["n_target_classes"] == targets
    assert cfg["n_iter"] == 100 and cfg["apgd_restarts"] == 1 and cfg["seed"] == 0
    assert cfg["backend"].startswith("pyautoattack ")
    plus = AutoAttackAdapter(torch.nn.Linear(2, 10), eps="1/255", version="plus").settings(10)
    assert plus["apgd_restarts"] == 5 and "apgd-dlr" in plus["attacks"]


def test_bad_settings_are_usage_errors():
    model = torch.nn.Linear(2, 10)
    with pytest.raises(ClipxUsageError, match="explicit integer"):
        AutoAttackAdapter(model, seed=None)
    with pytest.raises(ClipxUsageError, match="subset"):
        AutoAttackAdapter(model, attacks=["apgd-xx"])
    with pytest.raises(ClipxUsageError, match="backend"):
        AutoAttackAdapter(model, backend="foolbox")
    try:
        import autoattack  # noqa: F401
    except ImportError:
        with pytest.raises(ClipxUsageError, match="fra31"):
            AutoAttackAdapter(model, backend="fra31")


def test_two_class_set_runs_apgd_ce_only(c10):
    x, y = cifar10_batch(200, seed=3)
    keep = y < 2  # airplane vs automobile
    x, y = x[keep][:12], y[keep][:12]
    zs = ZeroShotClassifier(c10, CIFAR10_CLASSES[:2]).eval()
    atk = build_attack("autoattack", zs, eps="2/255", n_iter=5, seed=0)
    x_adv = atk(x, y).images
    verify_adversarial(x, x_adv, 2 / 255, "Linf", "autoattack")
    assert atk.impl.info["attacks"] == ["apgd-ce"] and atk.impl.info["dropped"] == ["apgd-t"]


def test_torchattacks_backend_is_labelled_and_within_eps(c10):
    x, y = cifar10_batch(16, seed=4)
    zs = ZeroShotClassifier(c10, CIFAR10_CLASSES).eval()
    atk = build_attack("autoattack", zs, eps="2/255", n_iter=5, seed=0, backend="torchattacks")
    x_adv = atk(x, y).images
    verify_adversarial(x, x_adv, 2 / 255, "Linf", "autoattack")
    assert atk.impl.backend.startswith("torchattacks ")
    with torch.no_grad():
        clean = (zs(x).argmax(1) == y).sum()
        robust = (zs(x_adv).argmax(1) == y).sum()
    assert robust < clean


def _direct(zs, x, y, seed, bs, eps=1 / 255, attacks=("apgd-ce", "apgd-t")):
    """fra31's code as a user calls it: custom APGD-CE + APGD-T with the standard settings, on
    the model in eval mode with frozen weights (requires_grad=False changes autograd's float
    rounding by ~1e-3 in x_adv, so both sides must agree on it to compare bit for bit)."""
    from pyautoattack import AutoAttack

    aa = AutoAttack(zs, attacks=list(attacks), version="custom", eps=eps, seed=seed, device="cpu")
    aa.apgd.n_restarts = 1  # 'custom' keeps the constructor's 5; fra31 standard uses 1
    with attack_mode(zs):
        return aa.run_standard_evaluation(x, y, batch_size=bs)


@pytest.mark.slow
def test_engine_equals_pyautoattack_called_directly(c10, tmp_path):
    """APGD-T with fra31's settings (100 iterations, 9 target classes), through the engine.
    (APGD-CE is compared bit for bit below; running both on survivors costs minutes on a CPU.)"""
    n, seed, eps = 8, 1, 4 / 255
    x, y = cifar10_batch(n, seed=seed)  # the engine draws the same samples with the protocol seed
    zs = ZeroShotClassifier(c10, CIFAR10_CLASSES).eval()
    _, y_adv = _direct(zs, x, y, seed=7, bs=n, eps=eps, attacks=["apgd-t"])
    n_direct = int((y_adv == y).sum())

    proto = Protocol(
        name="aa",
        attacks=[{"name": "autoattack", "params": {"seed": 7, "attacks": ["apgd-t"]}}],
        eps=[eps],
        datasets=[{"dataset": "cifar10-jpegs", "n": n}],
        seed=seed,
        batch_size=n,
    )
    rec = evaluate(c10, proto, tmp_path, label="c10", progress=False)[0]
    assert rec["robust_acc"] == pytest.approx(100 * n_direct / n, abs=1e-3)
    assert rec["attacks"][0]["backend"].startswith("pyautoattack")
    assert rec["attacks"][0]["params"] == {
        "seed": 7,
        "attacks": ["apgd-t"],
        "eps": eps,
        "norm": "Linf",
    }
    assert rec["robust_acc"] < rec["clean_acc"]


@pytest.mark.slow
def test_adapter_tensors_and_streamed_batches_equal_pyautoattack(c10, tmp_path):
    """Same x_adv tensors as pyautoattack; batches of 8 = pyautoattack on each batch of 8."""
    n, seed, eps = 16, 2, 4 / 255
    x, y = cifar10_batch(n, seed=seed)
    zs = ZeroShotClassifier(c10, CIFAR10_CLASSES).eval()
    direct = [
        _direct(zs, x[i : i + 8], y[i : i + 8], seed=3, bs=8, eps=eps, attacks=["apgd-ce"])
        for i in range(0, n, 8)
    ]
    adapter = build_attack("autoattack", zs, eps=eps, seed=3, attacks=["apgd-ce"])
    assert torch.equal(adapter(x[:8], y[:8]).images, direct[0][0])  # tensors, not just accuracy

    n_direct = int((torch.cat([d[1] for d in direct]) == y).sum())
    proto = Protocol(
        name="aa",
        attacks=[{"name": "autoattack", "params": {"seed": 3, "attacks": ["apgd-ce"]}}],
        eps=[eps],
        datasets=[{"dataset": "cifar10-jpegs", "n": n}],
        seed=seed,
        batch_size=8,
    )
    rec = evaluate(c10, proto, tmp_path, label="c10", progress=False)[0]
    assert rec["robust_acc"] == pytest.approx(100 * n_direct / n, abs=1e-3)
