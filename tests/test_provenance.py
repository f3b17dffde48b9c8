"""Provenance on every results artifact: records, cards, results.json, summary.json and the run's
provenance.json say which commit (and whether the tree was dirty), which start model (weights
sha256), which packages and machine, and what the evaluation and training cost."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from clip_robust_ext.cli import cli
from clip_robust_ext.utils import provenance as P

RECIPE = """
[recipe]
name = "provrun"
seed = 3
{seeds}

[model]
source = "open_clip"
arch = "clipx-tiny"

[data]
dataset = "procedural-shapes"
split = "train"
n = 16
templates = "shapes"

[defense]
name = "ft-standard"
max_steps = 2
batch_size = 8
lr = 1e-3

[evaluate]
protocol = "clean"
templates = "shapes"
n_samples = 16
datasets = [{{ dataset = "procedural-shapes", split = "test" }}]
"""

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()


def _run(tmp_path: Path, seeds: str = "") -> Path:
    recipe = tmp_path / "provrun.toml"
    recipe.write_text(textwrap.dedent(RECIPE.format(seeds=seeds)))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(cli, ["recipe", "run", str(recipe), "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    return run_dir


def test_git_state_is_the_checkouts_head():
    state = P.git_state()
    assert state["commit"] == _git("rev-parse", "HEAD")
    assert state["dirty"] == bool(_git("status", "--porcelain"))


def test_machine_names_the_cpu_and_the_threads():
    m = P.machine()
    assert m["cpu_model"] and m["cpu_count"] >= 1
    assert m["torch_threads"] == torch.get_num_threads()


def test_a_start_model_other_than_the_published_one_is_said(capsys):
    info = P.start_model_info("procedural-small", "a" * 64, "b" * 64, "pre-trained on this machine")
    assert info["matches_reference"] is False
    assert "not the bbbbbbbbbbbb... the published tables came from" in capsys.readouterr().err
    same = P.start_model_info("procedural-small", "b" * 64, "b" * 64)
    assert same["matches_reference"] is True and capsys.readouterr().err == ""
    assert P.start_model_info("open_clip", "a" * 64, None)["matches_reference"] is None


@pytest.mark.slow
def test_a_run_stamps_records_cards_and_provenance_json(tmp_path):
    run_dir = _run(tmp_path)
    head = _git("rev-parse", "HEAD")
    records = json.loads((run_dir / "results.json").read_text())
    cards = {p.stem: json.loads(p.read_text()) for p in (run_dir / "cards").glob("*.json")}
    start_sha = cards["clip.clean"]["model"]["weights_sha256"]  # hashed by the card, separately
    for rec in records:
        prov = rec["provenance"]
        assert prov["commit"] == head and isinstance(prov["dirty"], bool)
        assert prov["start_model"]["weights_sha256"] == start_sha
        assert prov["start_model"]["matches_reference"] is None  # no published open_clip tiny
        assert prov["cpu_s"] > 0 and prov["wall_s"] > 0
        assert prov["packages"]["torch"] == torch.__version__.split("+")[0]
    for card in cards.values():
        assert card["provenance"]["start_model"]["weights_sha256"] == start_sha
        assert card["provenance"]["machine"]["cpu_model"] == P.cpu_model()
    assert f"`{head[:10]}" in (run_dir / "cards" / "ft-standard.clean.md").read_text()
    run = json.loads((run_dir / "provenance.json").read_text())
    assert run["computed_with"]["commits"] == [head]
    assert run["training"]["ft-standard"]["cpu_s"] > 0
    line = (run_dir / "results.md").read_text().strip().splitlines()[-1]
    assert line.startswith(f"Provenance: commit {head[:10]}") and start_sha[:12] in line


@pytest.mark.slow
def test_a_multi_seed_summary_row_says_what_it_was_computed_with(tmp_path):
    run_dir = _run(tmp_path, seeds="seeds = [0, 1]")
    rows = json.loads((run_dir / "summary.json").read_text())
    assert rows and all(r["provenance"]["commits"] == [_git("rev-parse", "HEAD")] for r in rows)
    # each seed builds its start model from its own seed: the summary names both, as the cards do
    cards = [run_dir / f"seed-{s}" / "cards" / "clip.clean.json" for s in (0, 1)]
    expected = {json.loads(c.read_text())["model"]["weights_sha256"] for c in cards}
    for row in rows:
        assert {s["weights_sha256"] for s in row["provenance"]["start_models"]} == expected
    study = json.loads((run_dir / "provenance.json").read_text())
    assert set(study["training"]) == {"seed-0/ft-standard", "seed-1/ft-standard"}
