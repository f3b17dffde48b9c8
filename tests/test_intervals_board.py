"""Seed-summary intervals (evaluation/intervals.py) and leaderboard ranks (boardstats.py) on
committed artifacts and per-sample outcome blocks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import REPO
from scipy.stats import binomtest

from clip_robust_ext.cli import cli
from clip_robust_ext.evaluation.intervals import add_intervals
from clip_robust_ext.evaluation.outcomes import Block
from clip_robust_ext.evaluation.spread import spread_table

CARDS = REPO / "docs" / "results" / "leaderboard" / "cards" / "recipe-mmcoa" / "cards"
VIEW = "cifar10-jpegs_test_unseen"


def _block(label, seed, clean, pgd):
    n = len(clean)
    return Block(
        label=label,
        seed=seed,
        view=VIEW,
        indices=np.arange(n),
        labels=np.zeros(n, dtype=np.int64),
        columns={"clean": np.asarray(clean, bool), "pgd@1/255": np.asarray(pgd, bool)},
        budgets={"1/255": ["pgd@1/255"]},
    )


def _row(label, blocks):
    def stat(metric):
        values = [100 * b.metric(metric, "1/255").mean() for b in blocks]
        return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}

    return {
        "label": label,
        "dataset_key": VIEW,
        "eps": 1 / 255,
        "eps_str": "1/255",
        "seeds": [b.seed for b in blocks],
        "n_seeds": len(blocks),
        "n": len(blocks[0].indices),
        "clean": stat("clean"),
        "robust": stat("robust"),
    }


def test_a_deterministic_model_gets_its_binomial_interval_not_a_zero_spread():
    rng = np.random.default_rng(0)
    clean, pgd = rng.random(64) < 0.9, rng.random(64) < 0.65
    start = [_block("clip", s, clean, pgd) for s in (0, 1, 2)]  # the same outcomes every seed
    tuned = [_block("tecoa", s, clean, pgd ^ (rng.random(64) < 0.1)) for s in (0, 1, 2)]
    rows = [_row("clip", start), _row("tecoa", tuned)]
    assert rows[0]["robust"]["std"] == 0.0
    add_intervals(rows, start + tuned, resamples=2000)
    robust = rows[0]["robust"]
    k = int((clean & pgd).sum())
    ci = binomtest(k, 64).proportion_ci(0.95, method="exact")
    assert robust["ci_method"] == "clopper-pearson"
    assert robust["ci"] == [
        pytest.approx(100 * ci.low, abs=1e-4),
        pytest.approx(100 * ci.high, abs=1e-4),
    ]
    assert rows[1]["robust"]["ci_method"] == "bootstrap"
    lo, hi = rows[1]["robust"]["ci"]
    assert lo < rows[1]["robust"]["mean"] < hi and hi - lo > 15  # 64 images: wide
    table = spread_table(rows)
    assert f"| clip | 3 | {rows[0]['clean']['mean']:.1f} [" in table and "±" not in table
    assert "95% interval" in table


def test_summary_without_outcomes_falls_back_to_the_values():
    row = _row("clip", [_block("clip", s, [1] * 40 + [0] * 24, [1] * 64) for s in (0, 1)])
    add_intervals([row], [])
    ci = binomtest(40, 64).proportion_ci(0.95, method="exact")
    assert row["clean"]["ci_method"] == "clopper-pearson"
    assert row["clean"]["ci"][0] == pytest.approx(100 * ci.low, abs=1e-4)


def test_leaderboard_of_a_multi_seed_run_has_a_seed_column_and_shared_ranks(tmp_path):
    for seed in (0, 1):
        folder = tmp_path / "run" / f"seed-{seed}" / "cards"
        folder.mkdir(parents=True)
        (folder.parent / "seed").write_text(f"{seed}\n")
        for name in ("mmcoa", "clip", "tecoa"):
            shutil.copy(CARDS / f"{name}.mmcoa.json", folder)
    out = tmp_path / "board"
    result = CliRunner().invoke(cli, ["leaderboard", str(tmp_path / "run"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    board = json.loads((out / "leaderboard.json").read_text())
    assert "seed" in board["columns"]
    rows = board["rows"]
    assert sorted((r["model"], r["seed"]) for r in rows) == sorted(
        (m, s) for m in ("mmcoa", "clip", "tecoa") for s in (0, 1)
    )
    # MMCoA: 44 of 500 robust (8.8%) vs 0 of 500 for the others: told apart (Fisher exact,
    # these cards were copied without their runs); its two seeds (same card) share rank 1
    assert [r["rank"] for r in rows] == [1, 1, 3, 3, 3, 3]
    assert rows[2]["vs above"].startswith("differs: Fisher exact")
    assert rows[0]["ci"] == "[6.5, 11.6]" and rows[2]["ci"] == "[0.0, 0.7]"
