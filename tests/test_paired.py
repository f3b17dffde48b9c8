"""Paired statistics (evaluation/paired.py): a case computed by hand, McNemar against an exact
binomial sum written out here and scipy's binomtest, and a simulation of 1000 synthetic studies
with a known difference (interval coverage, false rejections under a true null)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.paired_coverage import simulate  # noqa: E402 - the studies' generator
from clip_robust_ext.evaluation.paired import (  # noqa: E402
    accuracy_interval,
    bootstrap_means,
    compare,
    holm,
    line,
    sentence,
    verdict,
    with_holm,
)


def test_hand_computed_case():
    a = [1, 1, 1, 1, 0, 0, 1, 0, 1, 1]
    b = [1, 0, 0, 1, 0, 1, 0, 0, 0, 1]
    # by hand: A right and B wrong at positions 1, 2, 6, 8 (4); B right and A wrong at 5 (1);
    # d = (4 - 1) / 10 = 30 points; exact McNemar: P(X >= 4 | n = 5, 1/2) = (5 + 1) / 32,
    # doubled: 12 / 32 = 0.375
    c = compare(a, b, names=("a", "b"))
    assert (c.a_only, c.b_only) == (4, 1)
    assert c.diff == pytest.approx(30.0)
    assert c.p == pytest.approx(12 / 32)
    assert (c.acc_a, c.acc_b) == (pytest.approx(70.0), pytest.approx(40.0))
    assert c.lo < 30.0 < c.hi
    # the bootstrap is the PAIRED one: its spread is sqrt((p_disc - d^2) / n), not the unpaired
    # sqrt((pa (1 - pa) + pb (1 - pb)) / n): sqrt((0.5 - 0.09) / 10) = 0.2025
    reps = bootstrap_means(np.subtract(a, b)[None, :], resamples=100_000, seed=1)
    assert reps.std() == pytest.approx(math.sqrt(0.41 / 10), rel=0.02)
    assert reps.mean() == pytest.approx(0.3, abs=0.005)


def _exact_two_sided(k: int, n: int) -> float:
    """The two-sided exact binomial p at 1/2 written out: twice the smaller tail, capped at 1."""
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize(
    "a_only, b_only, both, neither, seeds",
    [(0, 0, 5, 5, 1), (1, 0, 3, 3, 1), (7, 2, 30, 11, 1), (25, 40, 300, 135, 1), (12, 3, 9, 6, 3)],
)
def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_pairs(
    a_only, b_only, both, neither, seeds
):
    rng = np.random.default_rng(a_only * 100 + b_only)
    pairs = [(1, 0)] * a_only + [(0, 1)] * b_only + [(1, 1)] * both + [(0, 0)] * neither
    pairs = np.array(pairs)[rng.permutation(len(pairs))]
    n = len(pairs) // seeds
    a, b = pairs[: n * seeds, 0].reshape(seeds, n), pairs[: n * seeds, 1].reshape(seeds, n)
    c = compare(a, b, resamples=1000)
    assert (c.a_only, c.b_only) == (a_only, b_only)  # pooled over every (seed, image) pair
    assert c.p == pytest.approx(_exact_two_sided(a_only, a_only + b_only), rel=1e-9)
    if a_only + b_only:
        assert c.p == pytest.approx(binomtest(a_only, a_only + b_only, 0.5).pvalue, rel=1e-12)
    assert c.diff == pytest.approx(100 * (a_only - b_only) / (n * seeds))


def test_simulation_one_seed_coverage_and_false_rejections():
    # measured: coverage 0.950 at d = 3 points; at d = 0 coverage 0.958, false rejections 0.038
    cover, _ = simulate(n=1000, seeds=1, seed_sd=0.0, d=0.03)
    assert 0.93 <= cover <= 0.97
    cover0, reject0 = simulate(n=1000, seeds=1, seed_sd=0.0, d=0.0)
    assert 0.93 <= cover0 <= 0.97
    assert 0.03 <= reject0 <= 0.07


def test_simulation_three_seeds_is_not_anticonservative():
    # with several seeds the image draw is shared by every seed drawn, and the per-(seed, image)
    # noise enters both the seed and the image draw: coverage at or above the nominal level
    # (measured 0.985, rejections 0.80, with a 1-point seed-to-seed sd, 3 seeds x 1000 images)
    cover, reject = simulate(n=1000, seeds=3, seed_sd=0.01, d=0.03, studies=400, resamples=1000)
    assert cover >= 0.93
    assert reject > 0.5  # a 3-point difference on 3 x 1000 pairs is found most of the time


def test_holm_by_hand():
    # p sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.5 (x1); step-down max
    assert holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])


def test_wording_follows_the_interval_and_the_corrected_p():
    rng = np.random.default_rng(0)
    better = rng.random(2000) < 0.6
    worse = better & (rng.random(2000) < 0.8)  # strictly fewer right: A beats B
    c = compare(better, worse, names=("tecoa", "clip"), metric="robust", eps="1/255", view="unseen")
    assert verdict(c) == "beats" and c.lo > 0
    assert line(c).startswith("tecoa - clip, robust@1/255, unseen: +")
    assert sentence(c).startswith("tecoa beats clip on robust@1/255, unseen (+")
    flipped = compare(worse, better, names=("clip", "tecoa"))
    assert verdict(flipped) == "loses to"
    same = compare(better, better[::-1], names=("x", "y"))
    assert verdict(same) == "cannot be told apart from"
    # one of many: a p of 0.03 that Holm lifts above 0.05 no longer "beats"
    few = compare([1] * 6 + [0] * 44, [0] * 50)  # 6 vs 0 discordant: p = 2 / 64 = 0.031
    assert few.p == pytest.approx(2 / 64) and verdict(few) == "beats"
    fam = with_holm([few, compare([1] * 50, [1] * 50), compare([1] * 50, [1] * 50)])
    assert fam[0].p_holm == pytest.approx(3 * 2 / 64) and verdict(fam[0]) != "beats"


def test_deterministic_model_gets_its_binomial_interval():
    same = np.tile(np.r_[np.ones(38), np.zeros(26)], (3, 1))  # one evaluation, 3 seeds
    lo, hi, how = accuracy_interval(same)
    ci = binomtest(38, 64).proportion_ci(0.95, method="exact")
    assert how == "clopper-pearson"
    assert (lo, hi) == (pytest.approx(100 * ci.low), pytest.approx(100 * ci.high))
    assert hi - lo > 20  # 64 images: about +- 12 points, not "± 0.0"
    moving = same.copy()
    moving[1, :5] = 1 - moving[1, :5]
    assert accuracy_interval(moving)[2] == "bootstrap"


def test_ten_thousand_resamples_of_1000_images_x_5_seeds_are_fast():
    import time

    rng = np.random.default_rng(0)
    p = np.linspace(0.05, 0.95, 1000)
    a, b = rng.random((5, 1000)) < p, rng.random((5, 1000)) < p
    start = time.process_time()
    compare(a, b, resamples=10_000)
    assert time.process_time() - start < 1.0  # measured 0.15 s CPU (under load)
