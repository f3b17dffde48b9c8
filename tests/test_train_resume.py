"""Exact resume: kill -9 mid-run, re-run, the final weights equal an uninterrupted run bitwise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clip_robust_ext.models import read_state_dict
from clip_robust_ext.training.checkpoint import load_checkpoint

WORKER = Path(__file__).with_name("train_worker.py")
STEPS = 14


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(WORKER.parent), env.get("PYTHONPATH", "")])
    return env


def _run(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(WORKER), str(run_dir), "--steps", str(STEPS), *extra]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), "a step was logged twice after resume"
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["full", "lora"])
def test_kill9_resume_is_bitwise_exact(tmp_path, scope):
    # TeCoA's PGD random starts consume the torch RNG; AdamW state; both towers trained (with
    # scope lora: peft adapters on both towers, frozen base weights, merged into final.pt)
    defense = "tecoa"
    ref = tmp_path / "uninterrupted"
    done = _run(ref, "--defense", defense, "--scope", scope)
    assert done.returncode == 0, done.stderr[-2000:]

    run = tmp_path / "killed"
    cmd = [
        sys.executable,
        str(WORKER),
        str(run),
        "--defense",
        defense,
        "--steps",
        str(STEPS),
        "--sleep",
        "0.3",
        "--scope",
        scope,
    ]
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 240
    metrics = run / "metrics.jsonl"
    # kill between checkpoints (every 2 steps): after step 7 is logged, before step 8's checkpoint
    while time.time() < deadline:
        if metrics.is_file() and any(
            json.loads(x).get("step") == 7 for x in metrics.read_text().splitlines() if x
        ):
            break
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    state = load_checkpoint(run / "checkpoint.pt")  # weights_only=True inside
    assert 2 <= state["step"] < STEPS, "the run was not interrupted midway"
    assert not (run / "final.pt").exists()
    raw = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert (
        set(raw["rng"][0]) >= {"python", "numpy", "torch"}
        and raw["fingerprint"]["defense"]["name"] == defense
    )

    if scope == "lora":  # the checkpoint holds the adapters beside the untouched base weights
        assert any(".lora_B." in k for k in raw["model"])
    resumed = _run(run, "--defense", defense, "--scope", scope)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = read_state_dict(ref / "final.pt"), read_state_dict(run / "final.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    assert _losses(ref) == _losses(run)
    if scope == "lora":
        adapters = [p / "adapter" / "adapter_model.safetensors" for p in (ref, run)]
        assert adapters[0].read_bytes() == adapters[1].read_bytes()
