"""Early exit in the evaluation PGD: same iteration as torchattacks.PGD, never a higher robust
accuracy than the final iterate, every returned example inside the ball, fewer passes."""

from __future__ import annotations

import pytest
import torch
from helpers import CIFAR10_CLASSES, assets, cifar10_batch, small_c10

from clip_robust_ext.api import ClipxUsageError, EarlyExitPGD, build_attack, verify_adversarial
from clip_robust_ext.evaluation import evaluate
from clip_robust_ext.evaluation.engine import build_classifier
from clip_robust_ext.evaluation.protocols import Protocol, get_protocol

EPS = 2 / 255


@pytest.fixture(scope="module")
def zs():
    assets()
    return build_classifier(small_c10(), CIFAR10_CLASSES, ["This is a photo of a {}"])


def _run(attack, x, y, seed=0):
    torch.manual_seed(seed)
    return attack(x, y).images


def test_full_length_iteration_is_torchattacks_pgd_bit_for_bit(zs):
    x, y = cifar10_batch(8, seed=1)
    params = dict(eps=EPS, alpha=EPS / 4, steps=5, random_start=True)
    ref = _run(build_attack("pgd", zs, **params), x, y)
    ours = _run(build_attack("pgd", zs, **params, early_exit=True), x, y)
    torch.manual_seed(0)
    full = EarlyExitPGD(zs, **params, early_exit=False)(x, y)
    assert torch.equal(full, ref)  # the same draws, steps and projections
    assert not torch.equal(ours, ref)  # early exit returned earlier iterates for some samples


def test_early_exit_is_never_above_the_final_iterate_and_costs_fewer_passes(zs):
    x, y = cifar10_batch(48, seed=2)
    with torch.no_grad():
        keep = zs(x).argmax(1) == y  # the engine attacks the clean-correct samples
    x, y = x[keep], y[keep]
    params = dict(eps=EPS, alpha=EPS / 4, steps=10, random_start=True)
    full = _run(build_attack("pgd", zs, **params), x, y, seed=3)
    early_attack = build_attack("pgd", zs, **params, early_exit=True)
    early = _run(early_attack, x, y, seed=3)
    verify_adversarial(x, early, EPS, "Linf", "early-exit pgd")
    with torch.no_grad():
        robust_full = zs(full).argmax(1) == y
        robust_early = zs(early).argmax(1) == y
    assert not (robust_early & ~robust_full).any()  # robust under early exit => robust at the end
    assert robust_early.sum() <= robust_full.sum()
    assert 0 < (~robust_early).sum() < len(y)  # the setting has both outcomes
    passes = early_attack.impl.passes
    assert passes < 10 * len(y)  # broken samples stopped paying
    # each broken sample paid until its first misclassified iterate: at least one pass each
    assert passes >= 10 * int(robust_early.sum()) + int((~robust_early).sum())


def test_protocol_records_the_mode_and_the_presets_state_theirs(tmp_path):
    assert get_protocol("tecoa-16").early_exit is False  # TeCoA's code scores the final iterate
    assert get_protocol("mmcoa").early_exit is False
    assert get_protocol("pgd").early_exit is True and Protocol().early_exit is True
    pgd = get_protocol("pgd")
    off = pgd.with_overrides(early_exit=False)
    assert pgd.dataset_hash(pgd.datasets[0]) != off.dataset_hash(off.datasets[0])
    with pytest.raises(ClipxUsageError, match="early_exit must be true or false"):
        Protocol(early_exit="yes")
    aa = get_protocol("fare-aa")  # no attack takes the setting: results stay reusable
    aa_off = aa.with_overrides(early_exit=False)
    assert aa.dataset_hash(aa.datasets[0]) == aa_off.dataset_hash(aa_off.datasets[0])


def test_engine_scores_early_exit_no_higher_than_the_final_iterate(tmp_path):
    assets()
    loaded = small_c10()
    proto = Protocol(
        name="t",
        attacks=[{"name": "pgd", "label": "pgd-5", "params": {"steps": 5, "alpha": "eps/4"}}],
        eps=["2/255"],
        datasets=[{"dataset": "cifar10-jpegs", "split": "test", "n": 24}],
        batch_size=12,
        templates="tecoa",
    )
    (early,) = evaluate(loaded, proto, tmp_path / "on", label="m", progress=False)
    final_proto = proto.with_overrides(early_exit=False)
    (final,) = evaluate(loaded, final_proto, tmp_path / "off", label="m", progress=False)
    assert early["robust_acc"] <= final["robust_acc"]
    assert early["attacks"][0]["params"]["early_exit"] is True
    assert early["attacks"][0]["backend"].startswith("clipx EarlyExitPGD")
    assert final["attacks"][0]["params"]["early_exit"] is False
    assert final["attacks"][0]["backend"].startswith("torchattacks")
