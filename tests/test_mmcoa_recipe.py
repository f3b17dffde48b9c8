"""`clipx recipe run mmcoa` end to end at a small size: the shipped recipe (default profile) with
its steps and sample counts shrunk, so the pipeline, table and text-attack report are what a user
gets (pretrain procedural-small if not cached -> train MMCoA / FT-standard / TeCoA -> evaluate)."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from clip_robust_ext.cli import cli

SMALL = [
    "data.n=64",
    "defense.max_steps=3",
    "defense.batch_size=16",
    "defense.steps=2",
    "defense.warmup_steps=1",
    "baselines.0.max_steps=3",
    "baselines.0.batch_size=16",
    "baselines.0.warmup_steps=1",
    "baselines.1.max_steps=3",
    "baselines.1.batch_size=16",
    "baselines.1.steps=2",
    "baselines.1.warmup_steps=1",
    "evaluate.n_samples=20",
    "evaluate.batch_size=5",
]
MODELS = ["clip", "mmcoa", "ft-standard", "tecoa"]
ATTACKS = ["image-pgd-10", "text", "multimodal"]
VIEWS = ["procedural-shapes_test_unseen", "procedural-shapes_test_seen"]


@pytest.mark.slow
def test_mmcoa_recipe_runs_end_to_end_and_reports_all_four_settings(tmp_path):
    run_dir = tmp_path / "run"
    args = ["recipe", "run", "mmcoa", "--run-dir", str(run_dir)]
    for item in SMALL:
        args += ["--set", item]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output

    table = (run_dir / "results.md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| model |"))
    for view in VIEWS:  # trained on the seen classes: unseen (zero-shot) and seen columns
        for column in ("clean", *ATTACKS):
            assert f"{view} {column} |" in header
    printed = result.stdout.splitlines()  # the terminal: one table per view, 100 columns
    assert all(view in printed for view in VIEWS) and max(map(len, printed)) <= 100
    for label in MODELS:
        assert any(line.split()[:1] == [label] for line in printed)

    records = json.loads((run_dir / "results.json").read_text())
    assert sorted(r["label"] for r in records) == sorted(MODELS * 2)
    assert {r["dataset_key"] for r in records} == set(VIEWS)
    for r in records:
        assert r["class_split"]["classes"] == r["dataset_key"].rsplit("_", 1)[1]
        assert r["n_classes"] == 5
    by_label = {r["label"]: r for r in records if r["dataset_key"] == VIEWS[0]}
    assert by_label["clip"]["clean_acc"] > 80  # procedural-small
    for r in records:
        assert r["n"] == 20 and set(r["per_attack"]) == set(ATTACKS)
        assert all(0 <= v <= r["clean_acc"] for v in r["per_attack"].values())
        text = next(a for a in r["attacks"] if a["label"] == "text")
        assert text["params"] == {"transformation": "charswap", "goal": "kl", "max_words": 1}
        kl = r["attack_info"]["text"]  # the KL summary is stored with the record
        assert kl["goal"] == "kl" and kl["words_changed_max"] <= 1
        assert kl["goal_score_max"] >= kl["goal_score_mean"] >= 0

    # 4 batches x (text + multimodal) per model, yet the class prompts are attacked once per model;
    # each run reports its threat model and KL goal score
    reports = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("clipx: text-attack (charswap, goal kl)")
    ]
    assert len(reports) == len(MODELS) * len(VIEWS), reports  # once per model and class set
    for line in reports:
        assert "at most 1 word(s) changed per prompt" in line
        kl_mean, kl_max = map(
            float, re.search(r"KL mean ([0-9.e+-]+), max ([0-9.e+-]+)", line).groups()
        )
        assert 0 < kl_mean <= kl_max
