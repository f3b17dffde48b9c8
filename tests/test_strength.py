"""Attack-strength checks: models built to mask gradients are flagged by the named check, the
plain small CLIP passes every check (evaluation/strength.py)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import small_c10

from clip_robust_ext.errors import ClipxError
from clip_robust_ext.evaluation import Protocol
from clip_robust_ext.evaluation import strength as S
from clip_robust_ext.evaluation.cards import card_paths
from clip_robust_ext.run.records import evaluate_loaded


class Quantised(torch.nn.Module):
    """Input quantisation (8 levels): torch.round has a zero gradient everywhere."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 8) / 8)


class Shattered(torch.nn.Module):
    """A preprocessing step that barely changes the image (1e-3) but whose gradient is
    dominated by a high-frequency term: non-zero, finite and useless (shattered gradients)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x + 1e-3 * torch.sin(1e5 * x))


class Noisy(torch.nn.Module):
    """A randomised defense: fresh Gaussian noise on every forward pass."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x + 0.3 * torch.randn_like(x))


def _pgd(steps: int) -> dict:
    return {"name": "pgd", "label": f"pgd-{steps}", "params": {"steps": steps, "alpha": "eps/4"}}


def _checks(tmp_path, wrap=None, **overrides) -> tuple[dict, dict]:
    settings = {
        "name": "strength-test",
        "attacks": [_pgd(10)],
        "eps": ["4/255"],
        "datasets": [{"dataset": "cifar10-jpegs", "split": "test"}],
        "n_samples": 8,
        "batch_size": 8,
        "templates": ["This is a photo of a {}"],
        "checks_n": 8,
        **overrides,
    }
    loaded = small_c10()
    if wrap is not None:
        loaded.model.visual = wrap(loaded.model.visual)
    protocol = Protocol(**settings)
    try:
        evaluate_loaded(loaded, protocol, tmp_path, "m")
    finally:  # a strict failure still leaves the card on disk
        card = json.loads(card_paths(tmp_path, "m", protocol.name)[0].read_text())
    return card, {c["name"]: c for c in card["checks"]["results"]}


@pytest.mark.slow
def test_plain_small_clip_passes_every_check(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "SQUARE_QUERIES", 50)  # Square's python loop: ~0.1 s a query here
    card, checks = _checks(
        tmp_path, attacks=[_pgd(3), _pgd(10)], eps=["1/255", "4/255"], checks="full"
    )
    assert card["checks"]["failed"] == [], checks
    ran = {name for name, c in checks.items() if c["status"] == "pass"}
    assert ran == set(checks), checks  # every check ran (none skipped) and passed
    curve = checks["loss_rises"]["curve"]
    assert curve[-1] > curve[0]


def test_input_quantisation_is_flagged_by_the_gradient_check_and_strict_fails(tmp_path):
    with pytest.raises(ClipxError, match="gradients"):
        _checks(tmp_path, Quantised, checks_strict=True)
    card = json.loads(card_paths(tmp_path, "m", "strength-test")[0].read_text())
    checks = {c["name"]: c for c in card["checks"]["results"]}
    assert checks["gradients"]["status"] == "fail"
    assert checks["gradients"]["zero"] == 8
    assert "gradients" in card["checks"]["failed"]


def test_shattered_gradients_are_flagged_by_the_loss_check(tmp_path):
    card, checks = _checks(tmp_path, Shattered)
    assert checks["gradients"]["status"] == "pass"  # non-zero, finite: only the loss tells
    assert checks["loss_rises"]["status"] == "fail", checks["loss_rises"]
    assert checks["randomized"]["status"] == "pass"


def test_randomised_defense_is_flagged_by_autoattacks_randomness_check(tmp_path):
    card, checks = _checks(tmp_path, Noisy)
    assert checks["randomized"]["status"] == "fail"
    assert checks["gradients"]["status"] == "pass"


# -- the checks on results alone (records as the engine writes them) --------------------------------
def _rec(eps: float, clean: float, robust: float, per_attack: dict, attacks: list) -> dict:
    return {
        "dataset_key": "d",
        "eps": eps,
        "eps_str": f"{round(eps * 255)}/255",
        "clean_acc": clean,
        "robust_acc": robust,
        "per_attack": per_attack,
        "attacks": [{"modality": "image", **a} for a in attacks],
    }


def test_result_checks_catch_non_monotone_eps_weak_strong_attacks_and_square():
    pgd10 = {"name": "pgd", "label": "pgd-10", "params": {"steps": 10}}
    pgd100 = {"name": "pgd", "label": "pgd-100", "params": {"steps": 100}}
    apgd = {"name": "autoattack", "label": "aa", "params": {"version": "custom"}}
    square = {"name": "square", "label": "square", "params": {}}
    assert S.stronger(pgd100, pgd10) and S.stronger(apgd, pgd10) and not S.stronger(pgd10, apgd)
    recs = [
        _rec(
            1 / 255,
            80,
            30,
            {"pgd-10": 30, "pgd-100": 35, "aa": 30, "square": 20},
            [pgd10, pgd100, apgd, square],
        ),
        _rec(
            4 / 255,
            80,
            40,
            {"pgd-10": 40, "pgd-100": 40, "aa": 40, "square": 40},
            [pgd10, pgd100, apgd, square],
        ),
    ]
    assert S.check_monotone(recs)["status"] == "fail"
    stronger = S.check_stronger(recs, cascade=False)
    assert (
        stronger["status"] == "fail" and "pgd-100 35.0 > weaker pgd-10 30.0" in stronger["detail"]
    )
    assert S.check_stronger(recs, cascade=True)["status"] == "skipped"
    assert S._black_box_vs_white("bb", S.blackbox_rows(recs))["status"] == "fail"
    big = [_rec(16 / 255, 80, 35, {"pgd-10": 35}, [pgd10])]
    assert S._large_eps(S.large_eps_rows(big), certified=False)["status"] == "fail"
    assert S._large_eps(S.large_eps_rows(big), certified=True)["status"] == "skipped"
