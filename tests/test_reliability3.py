"""Reliability round 3: the classes outside testers still broke after round 2. Lock files read
defensively and stale locks of the old format taken over; --json to a closed stdout; write
errors that name the file; results of two folders of one dataset name kept apart; cached models
checked before reuse; interpolation over a BatchNorm tower. The one-line refusals (devices,
budgets, name lengths, absurd lock files) are rows of test_bad_input.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from clip_robust_ext.analysis import blend_state
from clip_robust_ext.cli import cli
from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.evaluation.records import model_fingerprint
from clip_robust_ext.models import load_clip
from clip_robust_ext.run.builders import build_model
from clip_robust_ext.run.layout import LOCK_NAME
from clip_robust_ext.run.lock import RunLock

# ----------------------------------------------------------------------------------- locks

GARBAGE_LOCKS = {
    "pid-1e30": {"pid": 1e30, "host": socket.gethostname(), "started": 1.0},
    "pid-inf": '{"pid": Infinity, "started": 1.0}',
    "pid-nan": '{"pid": NaN}',
    "pid-negative": {"pid": -5},
    "pid-string": {"pid": "12", "host": socket.gethostname()},
    "pid-list": {"pid": [1], "started": "yesterday"},
    "pid-true": {"pid": True, "pid_start": {"a": 1}},
    "host-number": {"pid": 2**22 + 1, "host": 7, "started": -1e308},
    "started-huge": {"pid": 2**31 + 5, "started": 1e300},
}


@pytest.mark.parametrize("content", GARBAGE_LOCKS.values(), ids=list(GARBAGE_LOCKS))
def test_a_garbage_lock_is_stale_never_an_exception(tmp_path, content):
    """Before: pid 1e30 raised OverflowError and blocked the run dir until deleted by hand."""
    text = content if isinstance(content, str) else json.dumps(content)
    (tmp_path / LOCK_NAME).write_text(text)
    with pytest.raises(ClipxUsageError, match="did not finish; pass --resume"):
        RunLock(tmp_path, resume=False).acquire()
    with RunLock(tmp_path, resume=True) as lock:  # taken over
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.fixture
def unrelated_process():
    """A live process that is not clipx (its pid is what an old lock may name after reuse)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    time.sleep(0.2)
    yield proc
    proc.kill()
    proc.wait()


def test_an_old_format_lock_whose_pid_now_names_a_later_process_is_taken_over(
    tmp_path, unrelated_process
):
    """Old locks carry pid, host and started (no pid_start). Written an hour before the process
    now holding that pid started, they cannot be its lock: stale (before: refused forever)."""
    old = {"pid": unrelated_process.pid, "host": socket.gethostname(), "started": time.time()}
    old["started"] -= 3600
    (tmp_path / LOCK_NAME).write_text(json.dumps(old))
    with RunLock(tmp_path, resume=True) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_an_old_format_lock_of_a_process_still_running_is_refused(tmp_path, unrelated_process):
    """Written after that process started: it may be its owner, so the run dir stays in use."""
    old = {"pid": unrelated_process.pid, "host": socket.gethostname(), "started": time.time()}
    (tmp_path / LOCK_NAME).write_text(json.dumps(old))
    with pytest.raises(ClipxUsageError, match=f"in use by clipx process {unrelated_process.pid}"):
        RunLock(tmp_path, resume=True).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == old  # left alone


# ------------------------------------------------------------------- output and write errors


def _clipx(args: str, redirect: str) -> subprocess.CompletedProcess:
    cmd = f"{sys.executable} -m clip_robust_ext {args} {redirect}"
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("redirect", [">&-", "> /dev/full"], ids=["closed", "disk-full"])
def test_json_to_a_stdout_that_cannot_take_it_fails_loudly(redirect):
    """Before: `clipx recipe list --json >&-` exited 0 having written nothing."""
    out = _clipx("recipe list --json", redirect)
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("Error: --json: ")
    assert "Traceback" not in out.stderr


WRITE_UNDER_LIMIT = """
import resource, signal, sys, torch
from clip_robust_ext.cli import Failure, user_errors
from clip_robust_ext.utils.io import append_text, atomic_torch_save, atomic_write_json
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit write() fails (EFBIG), as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
for write, path, obj in ((atomic_write_json, sys.argv[1], list(range(5000))),
                         (atomic_torch_save, sys.argv[2], {"w": torch.zeros(5000)}),
                         (append_text, sys.argv[3], "x" * 5000)):
    try:
        with user_errors():
            write(path, obj)
    except Failure as exc:
        print(exc.format_message())
"""


@pytest.mark.slow  # a fresh interpreter importing torch: 10-20 s on a loaded 2-core machine
def test_a_failed_write_names_the_file(tmp_path):
    """A full disk said 'No space left on device' and nothing else; the file is named now."""
    script = tmp_path / "write.py"
    script.write_text(WRITE_UNDER_LIMIT)
    json_path, pt_path = tmp_path / "eval" / "results.json", tmp_path / "m" / "final.pt"
    log_path = tmp_path / "metrics.jsonl"
    out = subprocess.run(
        [sys.executable, str(script), str(json_path), str(pt_path), str(log_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3, out.stdout + out.stderr
    assert lines[0].startswith("File too large") and lines[0].endswith(f"({json_path})")
    assert "torch.save could not write" in lines[1] and lines[1].endswith(f"({pt_path})")
    assert lines[2].startswith("File too large") and lines[2].endswith(f"({log_path})")
    assert not json_path.exists() and not pt_path.exists()  # nothing half-written left


# ------------------------------------------------------------------------ result identity


def _folder(root: Path, colour: tuple[int, int, int]) -> Path:
    for cls, c in (("a_cls", colour), ("b_cls", (0, 0, 255))):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for j in range(2):
            Image.new("RGB", (8, 8), c).save(root / cls / f"{j}.png")
    return root


def test_two_image_folders_under_one_dataset_name_keep_their_own_results(tmp_path):
    """Before: the result key ignored the root, so the second folder replaced the first."""
    run = tmp_path / "run"
    records = []
    for name, colour in (("red", (255, 0, 0)), ("green", (0, 255, 0))):
        root = _folder(tmp_path / name, colour)
        out = CliRunner().invoke(
            cli,
            ["eval", "--model", "open_clip", "--arch", "clipx-tiny", "--protocol", "clean",
             "--set", f"datasets=[{{dataset='image-folder', root='{root}'}}]",
             "--set", "templates='a {}'", "--run-dir", str(run), "--json"],
        )  # fmt: skip
        assert out.exit_code == 0, out.output
        (rec,) = json.loads(out.stdout)["records"]
        records.append(rec)
    assert records[0]["dataset_key"] != records[1]["dataset_key"]
    kept = json.loads((run / "results.json").read_text())
    assert sorted(r["dataset_key"] for r in kept) == sorted(r["dataset_key"] for r in records)


# --------------------------------------------------------------------------- cached models

RECIPE = """
[recipe]
name = "tiny-cache"
[model]
source = "open_clip"
arch = "clipx-tiny"
[data]
dataset = "procedural-shapes"
split = "train"
n = 8
templates = "shapes"
[defense]
name = "ft-standard"
max_steps = 1
batch_size = 4
[evaluate]
protocol = "clean"
templates = "shapes"
n_samples = 4
datasets = [{ dataset = "procedural-shapes", split = "test" }]
"""


@pytest.mark.slow  # a recipe run, twice
def test_a_truncated_trained_model_is_written_again_not_reused(tmp_path):
    """Before: done.json said finished, so a final.pt cut short was handed to evaluation."""
    recipe, run = tmp_path / "r.toml", tmp_path / "run"
    recipe.write_text(RECIPE)
    first = CliRunner().invoke(cli, ["recipe", "run", str(recipe), "--run-dir", str(run)])
    assert first.exit_code == 0, first.output
    final = run / "ft-standard" / "final.pt"
    whole = final.read_bytes()
    final.write_bytes(whole[: len(whole) // 2])
    again = CliRunner().invoke(cli, ["recipe", "run", str(recipe), "--run-dir", str(run)])
    assert again.exit_code == 0, again.output
    assert "final.pt is " in again.stderr and "writing it again" in again.stderr
    assert final.read_bytes() == whole  # re-exported from the finished checkpoint: same model


def test_the_pretrained_model_cache_is_verified_before_reuse(tmp_path, capsys):
    """Before: a model.pt cut short was reused as long as its meta.json was intact."""
    from clip_robust_ext.training.pretrain import _finished

    folder = tmp_path / "procedural-small-k"
    folder.mkdir()
    weights = folder / "model.pt"
    torch.save({"w": torch.arange(4000.0)}, weights)
    whole = weights.read_bytes()
    (folder / "meta.json").write_text(json.dumps({"key": "k"}))  # a marker from before records
    assert _finished(folder, "k")
    weights.write_bytes(whole[:-100])
    assert not _finished(folder, "k")  # a torch archive cut short fails its zip check
    assert f"{weights} " in capsys.readouterr().err

    from clip_robust_ext.utils.integrity import file_record

    weights.write_bytes(whole)
    (folder / "meta.json").write_text(json.dumps({"key": "k", "weights": file_record(weights)}))
    assert _finished(folder, "k")
    weights.write_bytes(whole[:-100])
    assert not _finished(folder, "k")
    weights.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]))  # same size, other bytes
    assert not _finished(folder, "k")


# ------------------------------------------------------------------------- interpolation


def _batchnorm_tower(seed: int, batches: int) -> dict[str, torch.Tensor]:
    """clipx-tiny-rn (the ResNet tower of procedural-small) with BatchNorm statistics and
    counters moved by `batches` train-mode forward passes."""
    torch.manual_seed(seed)
    loaded = load_clip("clipx-tiny-rn")
    loaded.model.train()
    with torch.no_grad():
        for _ in range(batches):
            loaded.model.encode_image(torch.rand(2, 3, 32, 32))
    return loaded.model.state_dict()


def test_interpolate_blends_a_batchnorm_tower(tmp_path):
    """WiSE-FT on a tower with integer buffers: weights and running statistics blended, the
    num_batches_tracked counters taken from one end (before: exit 2, int64 values differ)."""
    a, b = _batchnorm_tower(0, 3), _batchnorm_tower(1, 5)
    counters = [k for k in a if k.endswith("num_batches_tracked")]
    assert counters and all(int(a[k]) != int(b[k]) for k in counters)
    paths = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for state, path in zip((a, b), paths):
        torch.save(state, path)
    run = tmp_path / "interp"
    out = CliRunner().invoke(
        cli,
        ["interpolate", *map(str, paths), "--arch", "clipx-tiny-rn", "--alphas", "0,0.25,1",
         "--protocol", "clean", "--dataset", "procedural-shapes", "--n", "4",
         "--run-dir", str(run), "--json"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    points = {p["alpha"]: p for p in json.loads(out.stdout)["points"]}
    mid = blend_state(a, b, 0.25)
    stat = next(k for k in a if k.endswith("running_mean") and not torch.equal(a[k], b[k]))
    assert torch.allclose(mid[stat], 0.75 * a[stat] + 0.25 * b[stat])
    assert all(torch.equal(mid[k], a[k]) for k in counters)
    assert all(torch.equal(blend_state(a, b, 1.0)[k], b[k]) for k in a)
    model = build_model({"source": "open_clip", "arch": "clipx-tiny-rn"}).model
    for alpha in (0.0, 0.25, 1.0):
        model.load_state_dict(blend_state(a, b, alpha))
        assert points[alpha]["fingerprint"] == model_fingerprint(model), alpha


# ------------------------------------------------------------------------------- devices


def test_a_model_device_of_auto_builds_on_this_machine():
    """model.device accepts what --device accepts; 'auto' is resolved, not passed to torch."""
    loaded = build_model({"source": "open_clip", "arch": "clipx-tiny", "device": "auto"})
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(loaded.model.parameters()).device.type == expected


def test_recipe_numbers_that_underflow_are_refused_in_the_file(tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(RECIPE.replace("batch_size = 4", "batch_size = 4\neps = 1e-400"))
    out = CliRunner().invoke(cli, ["recipe", "show", str(recipe)])
    assert out.exit_code == 2
    assert f"{recipe}: number 1e-400 is not zero but is 0.0 as a float" in out.stderr
    fine = textwrap.dedent(RECIPE).replace("batch_size = 4", "batch_size = 4\neps = 0.0e-400")
    recipe.write_text(fine)
    assert CliRunner().invoke(cli, ["recipe", "show", str(recipe)]).exit_code == 0
