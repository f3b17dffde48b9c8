"""The recipe runner: run dir contents, resume without recomputation, the run-dir lock."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner
from test_recipes import ToyPlugin

from clip_robust_ext import ClipxUsageError
from clip_robust_ext.cli import cli
from clip_robust_ext.evaluation.outcomes import read_samples
from clip_robust_ext.run.layout import LOCK_NAME
from clip_robust_ext.run.lock import RunLock

RECIPE = """
[recipe]
name = "toyrun"
seed = 1

[model]
source = "open_clip"
arch = "clipx-tiny"

[data]
dataset = "procedural-shapes"
split = "train"
n = 16
templates = "shapes"

[defense]
name = "toy-ce"
max_steps = 2
batch_size = 8
lr = 1e-3

[evaluate]
protocol = "clean"
templates = "shapes"
n_samples = 16
datasets = [{ dataset = "procedural-shapes", split = "test" }]
"""


@pytest.fixture
def toy_recipe(tmp_path, register_plugin):
    register_plugin(ToyPlugin(), "toy-run")
    path = tmp_path / "toyrun.toml"
    path.write_text(textwrap.dedent(RECIPE))
    return path


def _run(*args: str):
    return CliRunner().invoke(cli, ["recipe", "run", *args])


@pytest.mark.slow
def test_run_writes_the_run_dir_and_reruns_recompute_nothing(toy_recipe, tmp_path):
    run_dir = tmp_path / "run"
    first = _run(str(toy_recipe), "--run-dir", str(run_dir))
    assert first.exit_code == 0, first.output
    rows = [line.split()[0] for line in first.stdout.splitlines() if line.strip()]
    assert "clip" in rows and "toy-ce" in rows  # printed as aligned rows, one table per view
    resolved = json.loads((run_dir / "recipe.resolved.json").read_text())
    assert resolved["defense"]["train"] == {"max_steps": 2, "batch_size": 8, "lr": 1e-3, "seed": 1}
    assert (run_dir / "seed").read_text() == "1\n"
    assert "torch" in json.loads((run_dir / "versions.json").read_text())["packages"]
    records = json.loads((run_dir / "results.json").read_text())
    assert [r["label"] for r in records] == ["clip", "toy-ce"]
    assert all(r["n"] == 16 for r in records)
    metrics = (run_dir / "toy-ce" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2
    # one result card per model, the trained one identified by its checkpoint's sha256
    cards = {p.stem: json.loads(p.read_text()) for p in (run_dir / "cards").glob("*.json")}
    assert set(cards) == {"clip.clean", "toy-ce.clean"}
    final = (run_dir / "toy-ce" / "final.pt").read_bytes()
    trained = cards["toy-ce.clean"]["model"]
    assert trained["checkpoint_sha256"] == hashlib.sha256(final).hexdigest()
    assert cards["clip.clean"]["model"]["checkpoint_sha256"] is None
    assert len({c["protocol"]["hash"] for c in cards.values()}) == 1

    stamp = (run_dir / "toy-ce" / "final.pt").stat().st_mtime_ns
    second = _run(str(toy_recipe), "--run-dir", str(run_dir))
    assert second.exit_code == 0, second.output
    assert "toy-ce: already trained" in second.stderr
    assert (run_dir / "toy-ce" / "final.pt").stat().st_mtime_ns == stamp
    assert json.loads((run_dir / "results.json").read_text()) == records

    changed = _run(str(toy_recipe), "--run-dir", str(run_dir), "--set", "defense.max_steps=3")
    assert changed.exit_code == 2
    assert "differs at defense.train.max_steps" in changed.stderr


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_refuses_a_live_run_and_needs_resume_for_a_dead_one(tmp_path):
    lock = tmp_path / LOCK_NAME
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename, "started": 0}))
        for resume in (False, True):
            with pytest.raises(ClipxUsageError, match=f"in use by clipx process {sleeper.pid}"):
                RunLock(tmp_path, resume=resume).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": os.uname().nodename, "started": 0}))
    with pytest.raises(ClipxUsageError, match="did not finish; pass --resume"):
        RunLock(tmp_path, resume=False).acquire()
    with RunLock(tmp_path, resume=True):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    with RunLock(tmp_path, resume=False):  # no lock left: a fresh run may start
        assert lock.exists()


def test_cli_reports_a_locked_run_dir_with_exit_2(toy_recipe, tmp_path):
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    (run_dir / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": os.uname().nodename}))
    result = _run(str(toy_recipe), "--run-dir", str(run_dir))
    assert result.exit_code == 2
    assert "did not finish; pass --resume" in result.stderr and "Traceback" not in result.output


def test_unwritable_run_dir_is_a_runtime_error_before_any_work(toy_recipe, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = _run(str(toy_recipe), "--run-dir", str(blocker / "run"))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and len(result.stderr.strip().splitlines()) == 1


SEEDS_RECIPE = (
    RECIPE.replace("seed = 1\n", "seed = 1\nseeds = [4, 5]\n")
    .replace('n = 16\ntemplates = "shapes"\n', 'n = 16\ntemplates = "shapes"\nclasses = "seen"\n')
    .replace(
        'datasets = [{ dataset = "procedural-shapes", split = "test" }]',
        'datasets = [{ dataset = "procedural-shapes", split = "test", classes = "unseen" },'
        ' { dataset = "procedural-shapes", split = "test", classes = "seen" }]',
    )
)


@pytest.mark.slow
def test_seeds_run_once_per_seed_and_report_mean_and_spread(tmp_path, register_plugin):
    register_plugin(ToyPlugin(), "toy-seeds")
    path = tmp_path / "toyseeds.toml"
    path.write_text(textwrap.dedent(SEEDS_RECIPE))
    run_dir = tmp_path / "run"
    result = _run(str(path), "--run-dir", str(run_dir))
    assert result.exit_code == 0, result.output
    for seed in (4, 5):
        one = json.loads((run_dir / f"seed-{seed}" / "recipe.resolved.json").read_text())
        assert one["recipe"]["seed"] == seed and "seeds" not in one["recipe"]
        assert one["defense"]["train"]["seed"] == seed
    records = json.loads((run_dir / "results.json").read_text())
    assert sorted({r["run_seed"] for r in records}) == [4, 5]
    assert len(records) == 2 * 2 * 2  # seeds x models x views
    for rec in records:  # the top-level records name the plugin behind every component
        parts = rec["components"]
        assert {"model", "protocol", "dataset"} <= set(parts)
        if rec["label"] == "toy-ce":
            assert parts["defense"]["plugin"] == "toy-seeds"
    trained = {r["run_seed"]: r["model"]["fingerprint"] for r in records if r["label"] == "toy-ce"}
    assert trained[4] != trained[5]  # different training seeds, different weights
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {(r["label"], r["dataset_key"]) for r in summary} == {
        (m, f"procedural-shapes_test_{v}") for m in ("clip", "toy-ce") for v in ("unseen", "seen")
    }
    for row in summary:  # (the toy's start model is a random init: it moves with the seed too)
        assert row["n_seeds"] == 2 and len(row["clean"]["values"]) == 2
        assert row["seeds"] == [4, 5]
        assert row["components"]["protocol"]["plugin"] == "builtin"
    assert any(line.split()[:2] == ["toy-ce", "2"] for line in result.stdout.splitlines())
    cells = (run_dir / "results.md").read_text()
    assert re.search(r"\| toy-ce \| 2 \| \d+\.\d \[\d+\.\d, \d+\.\d\] \|", cells)
    for row in summary:  # 95% intervals from the seeds' per-sample outcomes (samples.npz)
        assert row["clean"]["ci_method"] in ("clopper-pearson", "bootstrap")
    blocks = read_samples(run_dir / "samples.npz")
    assert sorted({(b.label, b.seed) for b in blocks}) == [
        (m, s) for m in ("clip", "toy-ce") for s in (4, 5)
    ]
    assert "| model | seeds | clean |" in (run_dir / "results.md").read_text()
