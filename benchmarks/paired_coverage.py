"""Coverage of `clipx compare`'s interval and false rejections of its test, on synthetic studies
with a known difference (docs/statistics.md; tests/test_paired.py runs the one-seed designs).

    python -m benchmarks.paired_coverage --json benchmarks/results/DATE-paired-coverage.json

A study: every outcome is 1[v < accuracy + a per-(model, seed) shift]; v is the image's own
difficulty (shared by both models and every seed) with probability `shared`, else fresh uniform,
so each model's expected accuracy is exactly its `accuracy` and the true difference is known.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from clip_robust_ext.evaluation.paired import compare

# (images, seeds, seed-to-seed sd, true difference, studies)
DESIGNS = [
    (1000, 1, 0.0, 0.03, 1000),
    (1000, 1, 0.0, 0.0, 1000),
    (1000, 3, 0.01, 0.03, 1000),
    (1000, 5, 0.0, 0.0, 1000),
    (1000, 5, 0.01, 0.03, 1000),
    (1000, 5, 0.02, 0.03, 400),
]


def synthetic_study(rng, n, seeds, acc_a, acc_b, seed_sd, shared=0.7):
    """(a, b) outcome matrices (seeds, images) with expected accuracies acc_a and acc_b."""
    u = rng.random(n)
    out = []
    for acc in (acc_a, acc_b):
        shift = seed_sd * rng.standard_normal(seeds)
        v = np.where(rng.random((seeds, n)) < shared, u, rng.random((seeds, n)))
        out.append(v < (acc + shift)[:, None])
    return out


def simulate(n, seeds, seed_sd, d, studies=1000, resamples=2000, seed=2026):
    """(coverage of the 95% interval, share of p < 0.05) over `studies` synthetic studies."""
    rng = np.random.default_rng(seed)
    cover = reject = 0
    for k in range(studies):
        a, b = synthetic_study(rng, n, seeds, 0.5 + d, 0.5, seed_sd)
        c = compare(a, b, resamples=resamples, seed=k)
        cover += c.lo <= 100 * d <= c.hi
        reject += c.p < 0.05
    return cover / studies, reject / studies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    rows = []
    for n, seeds, sd, d, studies in DESIGNS:
        start = time.process_time()
        cover, reject = simulate(n, seeds, sd, d, studies)
        rows.append(
            {"images": n, "seeds": seeds, "seed_sd": sd, "true_d": d, "studies": studies,
             "coverage": cover, "rejections": reject,
             "cpu_s": round(time.process_time() - start, 1)}
        )  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    with open(args.json, "w") as fh:
        json.dump({"generator_seed": 2026, "resamples": 2000, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
