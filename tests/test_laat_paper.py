"""LAAT paper mode end to end on the real CIFAR-10 JPEGs (tiny settings: plumbing, not accuracy)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from clipx_laat.cli import load_paper_config
from clipx_laat.paper import PaperConfig, resolve_split, run_paper
from helpers import CIFAR10_CLASSES, assets

from clip_robust_ext.errors import ClipxUsageError

CLASSES = CIFAR10_CLASSES


def test_split_defaults_and_errors():
    assert resolve_split(CLASSES, None, None) == (CLASSES[:5], CLASSES[5:])
    assert resolve_split(CLASSES, None, ["cat", "dog"]) == (
        [c for c in CLASSES if c not in ("cat", "dog")],
        ["cat", "dog"],
    )
    assert resolve_split(CLASSES, ["cat", "dog"], None)[1] == [
        c for c in CLASSES if c not in ("cat", "dog")
    ]
    with pytest.raises(ClipxUsageError, match="did you mean 'truck'"):
        resolve_split(CLASSES, None, ["truk", "dog"])
    with pytest.raises(ClipxUsageError, match="overlap"):
        resolve_split(CLASSES, ["cat", "dog"], ["dog", "frog"])


@pytest.mark.slow
def test_smoke_profile_runs_both_heads_and_writes_results(tmp_path):
    assets()
    doc = load_paper_config(
        profile="smoke", overrides=['heads=["expanded", "raw"]', "episodes=2", "n_query=4"]
    )
    cfg = PaperConfig.from_dict(doc)
    res = run_paper(cfg, tmp_path, echo=lambda s: None)
    assert set(res["heads"]) == {"expanded", "raw"}
    a = res["anchors"]
    assert a["expanded"]["all"] < a["raw"]["all"] - 0.3 and a["expanded"]["theta_max_deg"] > 30
    for head in ("expanded", "raw"):
        nv = res["heads"][head]["novel"]
        assert (
            nv["n"] == 5 * 8
            and nv["classes"] == 5
            and 0 <= nv["robust_acc"] <= nv["clean_acc"] <= 1
        )
        assert res["heads"][head]["episodic"]["episodes"] == 2
        assert (tmp_path / f"backbone-{head}.pt").is_file()
    assert json.loads((tmp_path / "results.json").read_text())["novel"] == [
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    md = (tmp_path / "results.md").read_text()
    assert "| expanded |" in md and "| raw |" in md and "mean pairwise cos" in md
    heads = {
        json.loads(line)["head"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    }
    assert heads == {"expanded", "raw"}


@pytest.mark.slow
def test_cli_anchors_reports_the_cosine_drop():
    assets()
    from clip_robust_ext.cli import cli

    res = CliRunner().invoke(cli, ["laat", "anchors", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output[res.output.index("{") :])
    assert rep["expanded"]["all_mean_pairwise_cos"] < rep["raw"]["all_mean_pairwise_cos"] - 0.3
    assert rep["novel"] == ["dog", "frog", "horse", "ship", "truck"]


def test_take_is_per_class_and_shuffled():
    from clipx_laat.paper import _take

    from clip_robust_ext.data import ProceduralShapes

    ds = ProceduralShapes(split="test", n=60, seed=0, image_size=16)
    names = list(ds.classnames)
    x, y = _take(ds, names, [names[3], names[1], names[7]], per_class=4, seed=0)
    assert x.shape == (12, 3, 16, 16) and sorted(y.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert y.tolist() != sorted(y.tolist())  # mixed order: a prefix covers several classes
    x2, y2 = _take(ds, names, [names[3], names[1], names[7]], per_class=4, seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)


@pytest.mark.slow
def test_paper_mode_run_dir_lock_resume_and_metrics_not_accumulated(tmp_path):
    """The recipe runner's run-dir rules: a finished head is reused, metrics.jsonl is not
    appended to across re-runs, an interrupted run needs --resume, a new config retrains."""
    import os
    import socket

    assets()
    overrides = ["epochs=1", "train_per_class=8", "test_per_class=4", "seen_test_per_class=2"]
    cfg = PaperConfig.from_dict(load_paper_config(profile="smoke", overrides=overrides))
    said: list[str] = []
    first = run_paper(cfg, tmp_path, echo=said.append)
    metrics = (tmp_path / "metrics.jsonl").read_text()
    assert metrics and json.loads((tmp_path / "versions.json").read_text())["plugins"]["laat"]

    said.clear()
    again = run_paper(cfg, tmp_path, echo=said.append)
    assert any("[expanded] already trained and evaluated" in s for s in said)
    assert again["heads"] == first["heads"]
    assert (tmp_path / "metrics.jsonl").read_text() == metrics  # not appended

    dead = os.fork()  # a pid that has surely exited: the owner of a stale lock
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    lock = {"pid": dead, "host": socket.gethostname(), "started": 0}
    (tmp_path / "run.lock").write_text(json.dumps(lock))
    with pytest.raises(ClipxUsageError, match="did not finish; pass --resume"):
        run_paper(cfg, tmp_path, echo=said.append)
    run_paper(cfg, tmp_path, echo=said.append, resume=True)
    assert not (tmp_path / "run.lock").exists()

    said.clear()
    other = PaperConfig.from_dict(
        load_paper_config(profile="smoke", overrides=[*overrides, "seed=1"])
    )
    run_paper(other, tmp_path, echo=said.append)
    assert not any("already trained" in s for s in said)  # a new config retrains the head
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == len(metrics.splitlines())
