"""Integration: attack-strength orderings on the real small CLIP, kill -9 and resume, torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import assets, small_c10

from clip_robust_ext.evaluation import Protocol, evaluate, read_log, result_path

WORKER = Path(__file__).with_name("eval_worker.py")
C10 = {"dataset": "cifar10-jpegs", "split": "test"}


@pytest.mark.slow
def test_attack_strength_orderings_on_small_clip(tmp_path):
    """clean > PGD-10 >= PGD-100, AutoAttack <= PGD-100 + 1, robust accuracy falls with eps."""
    assets()
    loaded = small_c10()
    n = 32
    step = {"alpha": "eps/4", "random_start": True}
    strength = Protocol(
        name="strength",
        attacks=[
            {"name": "pgd", "label": "pgd-10", "params": {"steps": 10, **step}},
            {"name": "pgd", "label": "pgd-100", "params": {"steps": 100, **step}},
            {"name": "autoattack"},
        ],
        eps=["1/255"],
        datasets=[{**C10, "n": n}],
        batch_size=32,
    )
    rec = evaluate(loaded, strength, tmp_path, label="c10", progress=False)[0]
    acc = rec["per_attack"]
    assert rec["clean_acc"] > 50
    assert rec["clean_acc"] > acc["pgd-10"] >= acc["pgd-100"]
    assert acc["autoattack"] <= acc["pgd-100"] + 1
    assert rec["robust_acc"] <= min(acc.values())

    sweep = Protocol(
        name="sweep",
        attacks=[{"name": "pgd", "label": "pgd-10", "params": {"steps": 10, **step}}],
        eps=["1/255", "2/255", "4/255", "8/255"],
        datasets=[{**C10, "n": n}],
        batch_size=32,
    )
    recs = evaluate(loaded, sweep, tmp_path, label="c10", progress=False)
    robust = [r["robust_acc"] for r in recs]
    assert robust == sorted(robust, reverse=True), robust
    assert robust[0] < recs[0]["clean_acc"] and robust[-1] <= 2.0


def _worker(run_dir: Path, protocol: dict, model: str, nproc: int = 1) -> tuple[list[str], dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    if nproc == 1:
        cmd = [sys.executable, str(WORKER)]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes=1",
            f"--nproc_per_node={nproc}",
            str(WORKER),
        ]
    return [*cmd, str(run_dir), "--model", model, "--protocol", json.dumps(protocol)], env


@pytest.mark.slow
def test_kill_9_then_rerun_recomputes_only_missing_datasets(tmp_path):
    datasets = [{"dataset": "procedural-shapes", "n": 64, "seed": s} for s in (1, 2, 3, 4)]
    protocol = {
        "protocol": "pgd",
        "steps": 5,
        "datasets": datasets,
        "templates": "shapes",
        "batch_size": 16,
    }
    cmd, env = _worker(tmp_path, protocol, "tiny")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    folder = tmp_path / "eval" / "m" / "pgd"

    def results() -> list[Path]:
        return [p for p in folder.glob("*_test_*.json") if ".partial." not in p.name]

    deadline = time.time() + 300
    while not results() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    logged = len(read_log(tmp_path))
    finished = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in results()}
    assert 1 <= len(finished) < len(datasets), (
        "kill landed after the run ended: make datasets bigger"
    )

    cmd, env = _worker(tmp_path, protocol, "tiny")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(records) == len(datasets)
    second_run = read_log(tmp_path)[logged:]
    skipped = {e["dataset"] + ".json" for e in second_run if e["event"] == "skipped"}
    computed = {e["dataset"] + ".json" for e in second_run if e["event"] == "computed"}
    assert skipped == set(finished)
    assert len(computed) == len(datasets) - len(finished) and not computed & skipped
    for name, (mtime, text) in finished.items():
        assert (folder / name).stat().st_mtime_ns == mtime and (folder / name).read_text() == text


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tmp_path):
    assets()
    protocol = {
        "protocol": "pgd",
        "steps": 3,
        "datasets": [{**C10, "n": 40}],
        "batch_size": 8,
        "attacks": [
            {"name": "pgd", "label": "pgd-3", "params": {"steps": 3, "alpha": "eps/2"}},
            {"name": "fgsm"},
        ],
        "eps": ["1/255", "4/255"],
    }
    outs = {}
    for nproc in (1, 2):
        cmd, env = _worker(tmp_path / str(nproc), protocol, "clipx-small-c10", nproc=nproc)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-3000:]
        path = result_path(tmp_path / str(nproc), "m", "pgd", "cifar10-jpegs_test")
        outs[nproc] = json.loads(path.read_text())
    one, two = outs[1], outs[2]
    assert two["records"][0]["world_size"] == 2 and one["records"][0]["world_size"] == 1
    assert one["samples"] == two["samples"]
    for a, b in zip(one["records"], two["records"]):
        assert (a["clean_acc"], a["robust_acc"], a["per_attack"]) == (
            b["clean_acc"],
            b["robust_acc"],
            b["per_attack"],
        )
    assert one["records"][1]["robust_acc"] < one["records"][0]["clean_acc"]
    assert not list((tmp_path / "2").rglob("*.partial.*"))
