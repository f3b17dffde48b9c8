"""Randomized smoothing: the radius formula, soundness against a linear classifier's exact
boundary distance, abstention against sigma, and per-seed reproducibility."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import beta, norm
from torch import nn

from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.evaluation.smoothing import (
    ABSTAIN,
    SmoothedClassifier,
    abstention_rate,
    certified_accuracy,
    certified_radius,
    lower_confidence_bound,
)

W = torch.tensor([[0.5, -1.0, 0.25, 2.0], [-0.5, 1.0, 1.25, -1.0]])
B = torch.tensor([0.1, -0.2])


def linear_model() -> nn.Module:
    """Two-class linear classifier on (1, 1, 4) 'images'."""
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(B)
    return nn.Sequential(nn.Flatten(), lin).eval()


def boundary_distance(x: torch.Tensor) -> float:
    """|w.x + b| / ||w|| for the logit difference: the exact L2 distance to the boundary."""
    w, b = W[0] - W[1], B[0] - B[1]
    return float((w @ x.flatten() + b).abs() / w.norm())


def point_at(distance: float, side: int = 0) -> torch.Tensor:
    """An input at the given distance from the boundary, on class `side`'s side."""
    w, b = W[0] - W[1], B[0] - B[1]
    unit = w / w.norm()
    on_boundary = -b / w.norm() * unit
    sign = 1.0 if side == 0 else -1.0
    return (on_boundary + sign * distance * unit).reshape(1, 1, 4)


@pytest.mark.parametrize(
    "k, n, alpha, sigma, p_lower, radius",
    [
        # p_lower = scipy.stats.beta.ppf(alpha, k, n - k + 1); radius = sigma * norm.ppf(p_lower)
        (990, 1000, 0.001, 0.25, 0.9760361871553114, 0.49450239553529984),
        (100, 100, 0.001, 0.12, 0.933254300796991, 0.18005700289447635),
        (60, 100, 0.001, 0.5, 0.4409842652212994, -0.07423710965770229),
    ],
)
def test_radius_is_sigma_times_probit_of_lower_bound(k, n, alpha, sigma, p_lower, radius):
    assert beta.ppf(alpha, k, n - k + 1) == pytest.approx(p_lower, rel=1e-12)
    assert lower_confidence_bound(k, n, alpha) == pytest.approx(p_lower, rel=1e-9)
    assert certified_radius(sigma, p_lower) == pytest.approx(radius, rel=1e-9)


def test_certify_of_a_constant_classifier_gives_the_closed_form_radius():
    # every draw returns class 0: p_lower = alpha ** (1 / n) = 0.001 ** 0.01 = 0.933254300796991
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0]))
    cert = SmoothedClassifier(model, 2, sigma=0.12).certify(torch.zeros(1, 1, 4), 10, 100, 0.001)
    assert (cert.label, cert.count) == (0, 100)
    assert cert.p_lower == pytest.approx(0.933254300796991, rel=1e-9)
    assert cert.radius == pytest.approx(0.18005700289447635, rel=1e-9)  # 0.12 * 1.500475


def test_certify_radius_matches_its_own_count():
    smoothed = SmoothedClassifier(linear_model(), 2, sigma=0.5)
    cert = smoothed.certify(point_at(0.4), 20, 500, 0.01, seed=3)
    p = beta.ppf(0.01, cert.count, 500 - cert.count + 1)
    assert cert.label == 0 and 0 < cert.count < 500
    assert cert.radius == pytest.approx(0.5 * norm.ppf(p), rel=1e-9)


@pytest.mark.parametrize("distance", [0.05, 0.15, 0.3, 0.45, 0.6])
def test_linear_radius_is_sound_and_tight_for_large_n(distance):
    sigma = 0.25
    smoothed = SmoothedClassifier(linear_model(), 2, sigma=sigma, batch_size=20000)
    for side in (0, 1):
        x = point_at(distance, side)
        assert boundary_distance(x) == pytest.approx(distance, abs=1e-5)
        small = smoothed.certify(x, 50, 1000, 0.001, seed=side)
        large = smoothed.certify(x, 50, 100_000, 0.001, seed=side)
        assert small.label in (side, ABSTAIN) and large.label == side
        assert small.radius <= distance and large.radius <= distance
        # for a linear f the smoothed classifier's exact radius is the boundary distance
        assert large.radius >= distance - 0.02


def test_abstention_grows_with_sigma_on_a_fixed_input():
    x = point_at(0.3)
    rates = []
    for sigma in (0.12, 0.5, 1.0, 2.0):
        smoothed = SmoothedClassifier(linear_model(), 2, sigma=sigma)
        certs = [smoothed.certify(x, 20, 100, 0.001, seed=s) for s in range(40)]
        rates.append(abstention_rate(certs))
    assert rates[0] == 0.0 and rates[-1] >= 90.0
    assert rates == sorted(rates) and rates[-1] > rates[1]


def test_predict_abstains_near_the_boundary_and_not_far_from_it():
    smoothed = SmoothedClassifier(linear_model(), 2, sigma=0.25)
    assert smoothed.predict(point_at(1e-4), 200, 0.001, seed=0) == ABSTAIN
    assert smoothed.predict(point_at(0.5, side=1), 200, 0.001, seed=0) == 1


def test_results_reproduce_per_seed_and_differ_across_seeds():
    smoothed = SmoothedClassifier(linear_model(), 2, sigma=0.5, batch_size=64)
    x = point_at(0.2)
    first = smoothed.certify(x, 20, 300, 0.01, seed=7)
    assert smoothed.certify(x, 20, 300, 0.01, seed=7) == first
    others = {smoothed.certify(x, 20, 300, 0.01, seed=s).count for s in range(8, 14)}
    assert others - {first.count}


def test_certified_accuracy_counts_abstentions_and_short_radii_as_wrong():
    smoothed = SmoothedClassifier(linear_model(), 2, sigma=0.25)
    xs = torch.stack([point_at(0.6), point_at(0.3, side=1), point_at(1e-4)])
    certs = smoothed.certify_all(xs, 20, 1000, 0.001, seed=0)
    assert certs[2].label == ABSTAIN
    assert certified_accuracy(certs, [0, 1, 0], 0.0) == pytest.approx(200 / 3)
    assert certified_accuracy(certs, [0, 1, 0], 0.4) == pytest.approx(100 / 3)
    assert certified_accuracy(certs, [1, 0, 0], 0.0) == 0.0
    assert not math.isnan(abstention_rate(certs))


@pytest.mark.parametrize("kwargs", [{"n0": 0}, {"n": 2.5}, {"alpha": 0.7}])
def test_bad_draw_settings_are_usage_errors(kwargs):
    smoothed = SmoothedClassifier(linear_model(), 2, sigma=0.25)
    args = {"n0": 10, "n": 100, "alpha": 0.001, **kwargs}
    with pytest.raises(ClipxUsageError):
        smoothed.certify(point_at(0.3), **args)
