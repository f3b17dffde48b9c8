"""`clipx leaderboard`: only cards with one protocol hash are ranked together."""

from __future__ import annotations

import csv
import json

from click.testing import CliRunner
from helpers import tiny_clip

from clip_robust_ext.cli import cli
from clip_robust_ext.evaluation import Protocol
from clip_robust_ext.run.records import evaluate_loaded


def _evaluate(run_dir, label: str, seed: int, n: int) -> None:
    protocol = Protocol(
        name="lb-test",
        attacks=[{"name": "fgsm", "label": "fgsm"}],
        eps=["1/255", "2/255"],
        datasets=[{"dataset": "procedural-shapes", "split": "test"}],
        n_samples=n,
        templates="shapes",
        checks="off",
    )
    evaluate_loaded(tiny_clip(seed), protocol, run_dir, label)


def test_cards_with_different_protocols_are_not_ranked_together(tmp_path):
    _evaluate(tmp_path / "run", "a", 0, 6)
    _evaluate(tmp_path / "run", "b", 1, 6)
    _evaluate(tmp_path / "other", "c", 2, 7)  # same protocol name, another sample count
    out = tmp_path / "board"
    result = CliRunner().invoke(
        cli, ["leaderboard", str(tmp_path / "run"), str(tmp_path / "other"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    board = json.loads((out / "leaderboard.json").read_text())
    assert sorted(r["model"] for r in board["rows"]) == ["a", "b"]
    (apart,) = board["set_apart"]
    assert apart["model"] == "c"
    assert "datasets[0].n (7 here, 6 ranked)" in apart["why"]
    assert "datasets[0].indices_sha256" in apart["why"]
    robust = [r["robust@2/255"] for r in board["rows"]]
    assert robust == sorted(robust, reverse=True)
    # 16.7 vs 0.0 on 6 images (one image): the paired test cannot tell them apart, one rank
    assert [r["rank"] for r in board["rows"]] == [1, 1]
    assert board["rows"][1]["vs above"].startswith("cannot be told apart: paired")
    assert all(r["ci"] for r in board["rows"]) and "seed" not in board["columns"]
    with open(out / "leaderboard.csv") as fh:
        assert sorted(r["model"] for r in csv.DictReader(fh)) == ["a", "b"]
    page = (out / "leaderboard.html").read_text()
    assert "addEventListener('click'" in page and "<td>c</td>" not in page
    assert "Set apart" in result.stdout and "`c`" in result.stdout
    assert (out / "scatter.png").stat().st_size > 0 and (out / "eps.png").stat().st_size > 0

    # the other protocol is ranked on its own when asked for by hash
    other = CliRunner().invoke(
        cli,
        ["leaderboard", str(tmp_path), "--out", str(tmp_path / "b2"), "--protocol", apart["hash"]],
    )
    assert other.exit_code == 0, other.output
    board2 = json.loads((tmp_path / "b2" / "leaderboard.json").read_text())
    assert [r["model"] for r in board2["rows"]] == ["c"] and len(board2["set_apart"]) == 2


def test_leaderboard_without_cards_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["leaderboard", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "no result cards" in result.output and "Traceback" not in result.output
