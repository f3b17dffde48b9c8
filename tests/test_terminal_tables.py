"""Every table the CLI prints fits 100 columns; the numbers it drops from a row reappear in a
continuation table or a per-view table, never lost (the files keep the full width)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from clip_robust_ext.cli import cli
from clip_robust_ext.evaluation.tables import markdown_table
from clip_robust_ext.utils.terminal import WIDTH, fit_markdown

NUM = re.compile(r"\d+\.\d+")
CARDS = Path(__file__).resolve().parents[1] / "docs/results/leaderboard/cards"


def _records(views: list[str], eps: list[str], attacks: list[str]) -> list[dict]:
    """Records shaped like the runner's: one per (model, view, eps), per-attack accuracies."""
    out = []
    for m, label in enumerate(["clip", "mmcoa", "ft-standard", "tecoa+ttc"]):
        for v, view in enumerate(views):
            for e, eps_str in enumerate(eps):
                per = {a: 10.0 * m + v + e + 0.01 * k for k, a in enumerate(attacks)}
                out.append(
                    {
                        "protocol": "transfer",
                        "label": label,
                        "dataset": view.split("_")[0],
                        "dataset_key": view,
                        "eps": (e + 1) / 255,
                        "eps_str": eps_str,
                        "clean_acc": 90.0 - m - v,
                        "robust_acc": min(per.values()),
                        "per_attack": per,
                        "attack": "+".join(attacks),
                        "n": 64,
                        "seed": 0,
                    }
                )
    return out


MAIN_JOB = _records(
    ["procedural-shapes_test_unseen", "procedural-shapes_test_seen"],
    ["4/255"],
    ["image-pgd-10", "text", "multimodal"],
)
TRANSFER = _records(
    ["cifar10-jpegs_test_unseen", "cifar10-jpegs_test_unseen-all-names", "cifar10-jpegs_test_seen"],
    ["1/255", "2/255"],
    ["pgd-10 (adaptive)", "pgd-10 (non-adaptive)"],
)


@pytest.mark.parametrize("records", [MAIN_JOB, TRANSFER], ids=["main-job", "transfer"])
def test_printed_results_fit_and_keep_every_number(records):
    markdown = markdown_table(records)
    assert max(map(len, markdown.splitlines())) > WIDTH  # the file keeps the full width
    printed = fit_markdown(markdown)
    assert max(map(len, printed.splitlines())) <= WIDTH
    assert sorted(set(NUM.findall(markdown))) == sorted(set(NUM.findall(printed)))


def test_transfer_prints_one_table_per_view_story_columns_first():
    printed = fit_markdown(markdown_table(TRANSFER))
    lines = printed.splitlines()
    for view in ["cifar10-jpegs_test_unseen", "cifar10-jpegs_test_seen", "average over views"]:
        start = lines.index(view)
        header = lines[start + 1].split()
        assert header[:4] == ["model", "clean", "robust@1/255", "robust@2/255"]


def test_single_view_drops_the_repeated_average():
    records = [r for r in MAIN_JOB if r["dataset_key"].endswith("unseen")]
    printed = fit_markdown(markdown_table(records))
    assert "average over views" not in printed
    assert "procedural-shapes_test_unseen" in printed


@pytest.mark.parametrize(
    "args",
    [
        ["models", "--zoo"],
        ["recipe", "list"],
        ["attacks"],
        ["defenses"],
        ["datasets"],
        ["protocols"],
        ["plugins"],
    ],
)
def test_listings_fit(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) > 3
    assert max(map(len, lines)) <= WIDTH


def test_zoo_listing_keeps_every_source():
    from clip_robust_ext.models.zoo import zoo_rows

    output = CliRunner().invoke(cli, ["models", "--zoo"]).output
    flat = "".join(output.split())
    for row in zoo_rows():
        assert row["name"] in output
        assert "".join(str(row["source"]).split()) in flat


def test_leaderboard_prints_in_100_columns(tmp_path):
    """The committed cards: the file keeps one 13-column row per model, the terminal splits it."""
    result = CliRunner().invoke(cli, ["leaderboard", str(CARDS), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= WIDTH
    assert max(map(len, (tmp_path / "leaderboard.md").read_text().splitlines())) > WIDTH
    rows = [line.split() for line in lines if line.split()[:1] == ["1"]]
    assert len(rows) >= 2 and all(row[1] == "mmcoa" for row in rows)  # keys repeated per part


def test_data_list_fits_and_never_breaks_a_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a short --root: a path itself is never broken
    result = CliRunner().invoke(cli, ["data", "list", "tecoa-16", "--root", "data"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= WIDTH
    command = "then: clipx data prepare tiny-imagenet tiny-imagenet-200.zip --root data"
    assert command in [line.strip() for line in lines]  # the whole command on one line
