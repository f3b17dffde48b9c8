"""`clipx eval` scaled out: torchrun, srun (SLURM variables), array-job shards and their merge.

Every multi-process run is compared with one process on the same command: the per-sample flags
(which sample each attack fooled) must be identical, not only the accuracies."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assets
from torch.distributed.run import get_args_parser

from clip_robust_ext.cli import cli
from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.evaluation.records import result_path
from clip_robust_ext.evaluation.shards import blocks, parse_shard
from clip_robust_ext.run.lock import RunLock
from clip_robust_ext.utils.launcher import Launch, detect, export_env, first_host

EVAL = [
    "--model", "clipx-small-c10", "--protocol", "pgd", "--set", "steps=2", "--eps", "2/255",
    "--templates", "tecoa", "--n-samples", "12", "--set", "batch_size=4",
    "--dataset", "cifar10-jpegs", "--dataset", "procedural-shapes",
]  # fmt: skip
KEYS = ["cifar10-jpegs_test", "procedural-shapes_test"]


# ------------------------------------------------------------------------------ no processes


def test_launcher_detection_from_environment():
    torchrun = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    assert detect(torchrun) == Launch(1, 2, 1, "torchrun")
    srun = {
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "8",
        "SLURM_STEP_NUM_TASKS": "4",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_ID": "0",
    }
    assert detect(srun) == Launch(3, 4, 1, "slurm")  # the step's tasks, not the allocation's
    # the batch script itself (no srun step) is one process, whatever the allocation holds
    assert detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) == Launch()
    # torchrun inside srun: torchrun's variables win
    assert detect({**srun, **torchrun}).source == "torchrun"
    assert detect({"WORLD_SIZE": "1"}) == Launch() and detect({}) == Launch()
    with pytest.raises(ClipxUsageError, match="RANK=2 is outside 0..1"):
        detect({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ClipxUsageError, match="SLURM_PROCID='x' is not an integer"):
        detect({**srun, "SLURM_PROCID": "x"})


def test_slurm_variables_become_env_rendezvous():
    assert first_host("gpu[07-09,12],cpu1") == "gpu07"
    assert first_host("node3,node4") == "node3" and first_host("a-b[1,2]") == "a-b1"
    env = {"SLURM_STEP_NODELIST": "gpu[07-09]", "SLURM_JOB_ID": "123456"}
    export_env(Launch(2, 3, 0, "slurm"), env)
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("gpu07", str(20000 + 123456 % 20000))
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("2", "3", "0")
    kept = {"MASTER_ADDR": "head", "MASTER_PORT": "29500", "SLURM_JOB_ID": "1"}
    export_env(Launch(0, 2, 0, "slurm"), kept)
    assert (kept["MASTER_ADDR"], kept["MASTER_PORT"]) == ("head", "29500")


def _torchrun_passes(option: str) -> bool:
    """Whether torchrun's own parser hands `option` to the program instead of claiming it."""
    try:
        args = get_args_parser().parse_args(
            ["--nproc_per_node=2", "-m", "clip_robust_ext", "eval", option, "1"]
        )
    except SystemExit:
        return False
    return args.training_script_args == ["eval", option, "1"]


@pytest.mark.parametrize("command", ["eval", "interpolate", "features"])
def test_every_option_but_n_survives_torchruns_parser(command, capsys):
    options = [o for p in cli.commands[command].params for o in p.opts if o.startswith("--")]
    assert "--n-samples" in options
    refused = [o for o in options if not _torchrun_passes(o)]
    capsys.readouterr()
    assert refused == ["--n"]  # argparse prefix matching: --nnodes, --nproc-per-node, ...


@pytest.mark.parametrize("command", ["eval", "interpolate", "features"])
def test_every_option_survives_accelerate_launchs_parser(command):
    launch = pytest.importorskip("accelerate.commands.launch")
    options = [o for p in cli.commands[command].params for o in p.opts if o.startswith("--")]
    for option in options:
        args = launch.launch_command_parser().parse_args(
            ["--multi_gpu", "--num_processes", "2", "-m", "clip_robust_ext", command, option, "1"]
        )
        assert args.training_script_args == [command, option, "1"], option


def test_shard_spelling_and_blocks():
    assert parse_shard("2/4") == (2, 4) and parse_shard(" 0 / 1 ") == (0, 1)
    for bad in ("4/4", "1/0", "-1/3", "a/b", "3"):
        with pytest.raises(ClipxUsageError, match="--shard"):
            parse_shard(bad)
    for units, count in ((6, 3), (7, 3), (2, 5), (100, 16)):
        parts = blocks(units, count)
        assert [u for part in parts for u in part] == list(range(units))  # no gap, no overlap
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


# ------------------------------------------------------------------------------- processes


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _clipx(*args: str, env: dict[str, str] | None = None, check: bool = True):
    done = subprocess.run(
        [sys.executable, "-m", "clip_robust_ext", *args],
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-3000:]
    return done


def _samples(run_dir: Path) -> dict[str, tuple]:
    out = {}
    for key in KEYS:
        doc = json.loads(result_path(run_dir, "clipx-small-c10", "pgd", key).read_text())
        accs = [(r["clean_acc"], r["robust_acc"], r["per_attack"]) for r in doc["records"]]
        out[key] = (doc["samples"], accs, doc["protocol_hash"])
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, tuple]:
    assets()
    run_dir = tmp_path_factory.mktemp("one") / "run"
    _clipx("eval", *EVAL, "--run-dir", str(run_dir))
    return _samples(run_dir)


@pytest.mark.slow
def test_torchrun_cli_eval_equals_one_process(one_process, tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "clip_robust_ext", "eval", *EVAL, "--run-dir", str(run_dir), "--json"],
        env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)  # rank 0 alone prints: one JSON document
    assert {r["world_size"] for r in doc["records"]} == {2}
    assert _samples(run_dir) == one_process
    assert len(list((run_dir / "cards").glob("*.json"))) == 1
    assert not (run_dir / "run.lock").exists() and not list(run_dir.rglob("*.partial.*"))


@pytest.mark.slow
def test_accelerate_launch_cli_eval_equals_one_process(one_process, tmp_path):
    pytest.importorskip("accelerate")
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
         "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "-m", "clip_robust_ext", "eval", *EVAL, "--run-dir", str(run_dir)],
        env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert _samples(run_dir) == one_process
    doc = json.loads(result_path(run_dir, "clipx-small-c10", "pgd", KEYS[0]).read_text())
    assert doc["records"][0]["world_size"] == 2


@pytest.mark.slow
def test_torchrun_ranks_share_rank0s_lock_refusal(tmp_path):
    run_dir = tmp_path / "run"
    lock = RunLock(run_dir, resume=False)
    lock.acquire()  # held by this test process: a live owner
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "clip_robust_ext", "eval", "--model", "clipx-small-c10", "--protocol", "clean",
         "--run-dir", str(run_dir)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lock.release()
    assert done.returncode != 0
    # both ranks report rank 0's refusal (no rank waits forever in a collective)
    assert done.stderr.count(f"is in use by clipx process {os.getpid()}") == 2, done.stderr[-2000:]


def _free_port_in(low: int, high: int) -> int:
    for port in range(low + os.getpid() % 1000, high):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


@pytest.mark.slow
def test_srun_variables_two_processes_equal_one_process(one_process, tmp_path):
    """Two processes started as srun starts them: SLURM variables only (no torchrun, no
    MASTER_ADDR/PORT); the rendezvous comes from the node list and the job id."""
    run_dir = tmp_path / "run"
    port = _free_port_in(20000, 40000)
    slurm = {
        "SLURM_NTASKS": "2",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_ID": str(port - 20000),  # the derived port: 20000 + job id % 20000
        "SLURM_STEP_NODELIST": "localhost",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "clip_robust_ext", "eval", *EVAL, "--run-dir", str(run_dir)],
            env=_env(**slurm, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert "Results in" in outs[0][1] and outs[1][0] == ""  # rank 0 reports, rank 1 is silent
    assert _samples(run_dir) == one_process
    doc = json.loads(result_path(run_dir, "clipx-small-c10", "pgd", KEYS[0]).read_text())
    assert doc["records"][0]["world_size"] == 2


@pytest.mark.slow
def test_shards_merged_equal_one_process(one_process, tmp_path):
    run_dir = tmp_path / "run"
    shard = ["eval", *EVAL, "--run-dir", str(run_dir), "--shard"]
    _clipx(*shard, "1/3")  # 6 batches: shard 1 takes the last of one dataset, first of the next
    parts = sorted(p.name for p in (run_dir / "shards" / "1-of-3").rglob("*_test.json"))
    assert parts == [f"{k}.json" for k in KEYS]
    early = _clipx("eval-merge", str(run_dir), check=False)
    assert early.returncode == 2 and "missing shards 0/3, 2/3" in early.stderr
    _clipx(*shard, "0/3")
    _clipx(*shard, "2/3")
    _clipx(*shard, "2/3")  # a finished shard reruns as a no-op
    log = (run_dir / "shards" / "2-of-3" / "eval" / "eval_log.jsonl").read_text()
    assert log.count('"skipped"') == 1 and log.count('"computed"') == 1

    (run_dir / "shards" / "1-of-2").mkdir()  # a folder of another split overlaps
    overlap = _clipx("eval-merge", str(run_dir), check=False)
    assert overlap.returncode == 2 and "shards of 2 and 3-way splits overlap" in overlap.stderr
    (run_dir / "shards" / "1-of-2").rmdir()

    merged = _clipx("eval-merge", str(run_dir), "--json")
    assert len(json.loads(merged.stdout)["records"]) == 2
    assert _samples(run_dir) == one_process  # per-sample flags identical, bit for bit
    results = json.loads((run_dir / "results.json").read_text())
    assert {r["dataset_key"] for r in results} == set(KEYS)
    assert all(r["shards"] == 3 and r["components"]["model"] for r in results)
    # the merged run dir is an ordinary one: `clipx eval` there reuses every dataset
    plain = _clipx("eval", *EVAL, "--run-dir", str(run_dir), "--json")
    assert [r["computed_at"] for r in json.loads(plain.stdout)["records"]] == [
        r["computed_at"] for r in results
    ]
