"""Randomized pipelines (evaluation/randomness.py): detected by the engine, attacked with EOT,
scored worst-case over final draws, and caught by the attack-strength checks when a protocol
declares them deterministic; the checks compare like with like (evaluation/strength.py)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import CIFAR10_CLASSES, cifar10_batch, small_c10, tiny_clip

from clip_robust_ext.api import DefendedClassifier, Protocol, ZeroShotClassifier, build_pgd, get
from clip_robust_ext.evaluation import strength as S
from clip_robust_ext.evaluation.cards import card_paths
from clip_robust_ext.evaluation.engine import plan_attacks
from clip_robust_ext.evaluation.randomness import deterministic
from clip_robust_ext.run.records import evaluate_loaded

DATA = [{"dataset": "cifar10-jpegs", "split": "test"}]
TEMPLATES = ["This is a photo of a {}"]


def _small_zs() -> ZeroShotClassifier:
    return ZeroShotClassifier(small_c10(), classnames=CIFAR10_CLASSES).eval()


def _noise(sigma: str = "16/255") -> object:
    return get("testtime", "noise").obj(sigma=sigma)


def test_the_probe_finds_the_noise_defense_random_and_the_small_clip_deterministic():
    zs = _small_zs()
    x, _ = cifar10_batch(8)
    assert deterministic(zs, x)
    assert deterministic(DefendedClassifier(zs, get("testtime", "ttc").obj()), x)  # seeded
    assert not deterministic(DefendedClassifier(zs, _noise()), x)
    assert not zs.training  # the probe leaves eval mode as it found it


def _worst_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> int:
    """Samples right under every one of `draws` scoring passes."""
    right = torch.ones(len(y), dtype=torch.bool)
    with torch.no_grad():
        for _ in range(draws):
            right &= model(x).argmax(1) == y
    return int(right.sum())


def test_eot_recovers_attack_success_a_single_sample_attack_misses():
    """The small CIFAR-10 CLIP behind Gaussian input noise (sigma 16/255), 64 CIFAR-10 test
    images, the 23 right under 10 noise draws; PGD-5 at 1/255 (step eps/4), scored worst of 10
    draws. Measured: single-sample PGD leaves 17 of 23 robust, EOT-8 PGD (torchattacks.EOTPGD)
    15 of 23 (with PGD-10 vs EOT-10: 15 vs 12): averaging the gradient over draws finds
    adversarial examples that one draw's gradient misses (seeds fixed; a strict, measured
    effect, about 1 minute of CPU)."""
    defended = DefendedClassifier(_small_zs(), _noise("16/255"))
    x, y = cifar10_batch(64)
    torch.manual_seed(0)
    keep = torch.ones(len(y), dtype=torch.bool)
    with torch.no_grad():
        for _ in range(10):
            keep &= defended(x).argmax(1) == y
    x, y = x[keep], y[keep]
    robust = {}
    for eot in (1, 8):
        torch.manual_seed(1)
        attack = build_pgd(defended, eps=1 / 255, alpha=0.25 / 255, steps=5, eot_samples=eot)
        adv = attack(x, y)
        assert (adv - x).abs().max() <= 1 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        torch.manual_seed(2)
        robust[eot] = _worst_of(defended, adv, y, 10)
    assert robust[8] < robust[1], robust
    assert type(build_pgd(defended, eot_samples=8).attack).__name__ == "EOTPGD"


def test_pgd_with_early_exit_averages_eot_draws():
    """EarlyExitPGD with eot_samples = 3 makes 3 forward+backward passes per sample and step."""
    zs = ZeroShotClassifier(tiny_clip(), classnames=CIFAR10_CLASSES).eval()
    x = torch.rand(2, 3, 32, 32)
    y = zs(x).argmax(1).detach()  # right under the model: nobody exits before the last step
    attack = build_pgd(zs, eps=1e-6, alpha=1e-7, steps=2, early_exit=True, eot_samples=3)
    attack(x, y)
    assert attack.passes == 2 * 3 * 2  # steps x draws x samples


def test_a_random_pipeline_gets_eot_rand_autoattack_and_no_early_exit():
    """The plan the engine makes against a pipeline it found random: every attack's EOT knob
    on, AutoAttack's 'rand' version, early exit off even where the attack spec asks for it."""
    zs = ZeroShotClassifier(tiny_clip(), classnames=CIFAR10_CLASSES).eval()
    protocol = Protocol(
        attacks=[
            {"name": "pgd", "params": {"steps": 2, "early_exit": True}},
            {"name": "apgd", "params": {"steps": 2}},
            {"name": "autoattack"},
        ],
        eps=["1/255"],
        datasets=DATA,
        eot_samples=4,
    )
    fixed = {p.name: p.params for p in plan_attacks(zs, protocol)}
    random = {p.name: p.params for p in plan_attacks(zs, protocol, randomized=True)}
    assert fixed["pgd"]["early_exit"] is True and "eot_samples" not in fixed["pgd"]
    assert random["pgd"]["early_exit"] is False and random["pgd"]["eot_samples"] == 4
    assert random["apgd"]["eot_iter"] == 4 and "eot_iter" not in fixed["apgd"]
    assert random["autoattack"]["version"] == "rand"


def test_early_exit_is_off_against_the_noise_defense_and_the_checks_flag_it(tmp_path):
    """An evaluation with early exit on, the noise defense and a protocol that declares
    determinism (eot_samples = 1): the engine finds the defended pipeline random, turns early
    exit off there (kept on for the deterministic undefended model), scores worst of 3 draws,
    records all of it, and the determinism check fails on the card."""
    protocol = Protocol(
        name="noise-test",
        attacks=[{"name": "pgd", "label": "pgd", "params": {"steps": 2, "alpha": "eps/2"}}],
        eps=["2/255"],
        datasets=DATA,
        templates=TEMPLATES,
        n_samples=8,
        batch_size=8,
        testtime=["noise"],
        testtime_modes=["adaptive"],
        early_exit=True,
        eot_samples=1,
        final_draws=3,
        checks="off",
    )
    plain, noisy = evaluate_loaded(small_c10(), protocol, tmp_path, "clip")
    assert plain["pipeline"] == {"deterministic": True, "early_exit": True}
    assert plain["attacks"][0]["params"]["early_exit"] is True
    assert noisy["label"] == "clip+noise"
    assert noisy["pipeline"]["deterministic"] is False
    assert noisy["pipeline"]["early_exit"] is False and noisy["pipeline"]["early_exit_disabled"]
    (attack,) = noisy["attacks"]
    assert attack["params"]["early_exit"] is False and attack["final_draws"] == 3
    check = S.check_determinism([plain, noisy], protocol)
    assert check["status"] == "fail" and check["pipelines"] == ["clip+noise cifar10-jpegs_test"]
    handled = protocol.with_overrides(eot_samples=2)
    assert S.check_determinism([plain, noisy], handled)["status"] == "pass"
    assert S.check_determinism([plain], protocol)["status"] == "pass"
    card = json.loads(card_paths(tmp_path, "clip", "noise-test")[0].read_text())
    found = [row["pipeline"]["deterministic"] for row in card["results"]["per_dataset"]]
    assert sorted(found) == [False, True]  # the card says which row was random


# -- the checks on planted records ------------------------------------------------------------------
def _rec(label: str, eps: float, clean: float, robust: float, attacks: dict | None = None) -> dict:
    attacks = attacks or {"pgd": robust}
    return {
        "label": label,
        "dataset_key": "c10",
        "eps": eps,
        "eps_str": f"{round(eps * 255)}/255",
        "clean_acc": clean,
        "robust_acc": robust,
        "per_attack": attacks,
        "attacks": [
            {"name": "pgd", "label": k, "modality": "image", "params": {"steps": int(k[4:] or 10)}}
            if k.startswith("pgd")
            else {"name": "apgd", "label": k, "modality": "image", "params": {"steps": 10}}
            for k in attacks
        ],
    }


def test_robust_not_below_clean_fires_on_planted_cases_only():
    ok = [_rec("m", 1 / 255, 90.0, 60.0), _rec("m", 0.0, 90.0, 90.0), _rec("m", 1 / 255, 0, 0)]
    assert S.check_robust_le_clean(ok)["status"] == "pass"
    above = S.check_robust_le_clean([_rec("m+noise", 1 / 255, 80.0, 85.0)])
    assert (
        above["status"] == "fail"
        and "m+noise c10 @ 1/255: robust 85.0 >= clean 80.0" in (above["detail"])
    )
    equal = S.check_robust_le_clean([_rec("m+crops", 1 / 255, 87.5, 87.5)])
    assert equal["status"] == "fail"


def test_eps_monotone_compares_a_pipeline_with_itself():
    """Undefended 87.5 and defended 100.0 at one budget are two series, not a rise with eps;
    a rise within one pipeline still fails."""
    rows = [
        _rec("m", 1 / 255, 100.0, 87.5),
        _rec("m+crops", 1 / 255, 100.0, 100.0),
        _rec("m", 2 / 255, 100.0, 50.0),
        _rec("m+crops", 2 / 255, 100.0, 62.5),
    ]
    assert S.check_monotone(rows)["status"] == "pass"
    rows.append(_rec("m+crops", 4 / 255, 100.0, 75.0))
    bad = S.check_monotone(rows)
    assert (
        bad["status"] == "fail"
        and "m+crops c10 robust: 62.5 at 2/255 -> 75.0 at 4/255" in (bad["detail"])
    )


def test_stronger_attack_scoring_higher_fires_and_modes_and_eot_are_ordered():
    weak = _rec("m", 1 / 255, 90.0, 40.0, {"pgd-10": 40.0, "pgd-50": 55.0})
    result = S.check_stronger([weak], cascade=False)
    assert result["status"] == "fail" and "pgd-50 55.0 > weaker pgd-10 40.0" in result["detail"]
    fine = _rec("m", 1 / 255, 90.0, 40.0, {"pgd-10": 45.0, "pgd-50": 40.0})
    assert S.check_stronger([fine], cascade=False)["status"] == "pass"
    pgd = {"name": "pgd", "label": "a", "params": {"steps": 10}}
    eot = {"name": "pgd", "label": "b", "params": {"steps": 10, "eot_samples": 10}}
    assert S.stronger(eot, pgd) and not S.stronger(pgd, eot)
    assert not S.stronger({**eot, "mode": "adaptive"}, {**pgd, "mode": "non-adaptive"})


def test_result_checks_stay_quiet_on_the_plain_small_clip(tmp_path):
    """The small CIFAR-10 CLIP, deterministic, PGD-3 and PGD-10 at 1/255 and 4/255 (8 images):
    no result check fires, and the determinism check passes on the records' probe."""
    protocol = Protocol(
        name="quiet-test",
        attacks=[
            {"name": "pgd", "label": "pgd-3", "params": {"steps": 3, "alpha": "eps/4"}},
            {"name": "pgd", "label": "pgd-10", "params": {"steps": 10, "alpha": "eps/4"}},
        ],
        eps=["1/255", "4/255"],
        datasets=DATA,
        templates=TEMPLATES,
        n_samples=8,
        batch_size=8,
        checks="off",
    )
    records = evaluate_loaded(small_c10(), protocol, tmp_path, "clip")
    assert all(r["pipeline"]["deterministic"] for r in records)
    for check in (
        S.check_monotone(records),
        S.check_robust_le_clean(records),
        S.check_stronger(records, cascade=False),
        S.check_determinism(records, protocol),
    ):
        assert check["status"] == "pass", check
    card = json.loads(card_paths(tmp_path, "clip", "quiet-test")[0].read_text())
    assert card["label"] == "clip"


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_bad_randomness_settings_are_usage_errors(bad):
    from clip_robust_ext.errors import ClipxUsageError

    with pytest.raises(ClipxUsageError, match="eot_samples must be"):
        Protocol(datasets=DATA, eot_samples=bad)
    with pytest.raises(ClipxUsageError, match="final_draws must be"):
        Protocol(datasets=DATA, final_draws=bad)
    with pytest.raises(ClipxUsageError, match="votes must be"):
        get("testtime", "noise").obj(votes=bad if bad is not True else 0)
