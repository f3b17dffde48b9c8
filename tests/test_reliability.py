"""Faults, untrusted files, adversarial-example integrity and determinism, end to end.

- kill -9 during a recipe's evaluation loses at most the dataset being evaluated; the stale lock
  refuses a plain re-run and --resume continues without retraining or re-evaluating;
- a full disk or an unwritable run dir is reported before training starts; a disk that fills up
  mid-training keeps the last good checkpoint and the run resumes from it;
- NaN and inf losses stop training with the step number and keep the last good checkpoint;
- a live run's lock refuses a second run on the same dir, --resume or not;
- checkpoints (model and training) are read without running code; no torch.load in the package
  goes without weights_only=True, and recipe code paths never eval/exec/import;
- a broken attack is caught and named; attacks restore train/eval mode and grad flags;
- same seed, same machine: identical evaluation records and bitwise-equal trained weights.
(kill -9 during training: tests/test_train_resume.py; during a bare evaluation:
tests/test_evaluation_slow.py; crafted recipes and bad input: tests/test_bad_input.py.)"""

from __future__ import annotations

import ast
import errno
import json
import math
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from helpers import REPO, assets, tiny_clip

from clip_robust_ext import hookimpl
from clip_robust_ext.attacks import build_attack
from clip_robust_ext.cli import cli
from clip_robust_ext.errors import AdversarialCheckError, ClipxError
from clip_robust_ext.evaluation import read_log
from clip_robust_ext.models import ZeroShotClassifier, read_state_dict
from clip_robust_ext.run.layout import LOCK_NAME
from clip_robust_ext.training.checkpoint import load_checkpoint

WORKER = Path(__file__).with_name("recipe_worker.py")

RECIPE = """
[recipe]
name = "{name}"
seed = 3

[model]
source = "open_clip"
arch = "clipx-tiny"

[data]
dataset = "procedural-shapes"
split = "train"
n = 24
templates = "shapes"

[defense]
name = "tecoa"
eps = "2/255"
alpha = "1/255"
steps = 2
max_steps = {steps}
batch_size = 8
lr = 1e-3
checkpoint_every = 2

[evaluate]
protocol = "pgd"
steps = 2
eps = ["2/255"]
templates = "shapes"
batch_size = 8
datasets = {datasets}
"""
SHAPES = '[{ dataset = "procedural-shapes", n = 16 }]'


def _recipe(tmp_path: Path, name: str = "rel", steps: int = 3, datasets: str = SHAPES) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(RECIPE.format(name=name, steps=steps, datasets=datasets)))
    return path


def _run(*args: str, **kw):
    return CliRunner().invoke(cli, ["recipe", "run", *args], prog_name="clipx", **kw)


def _error_line(result) -> str:
    lines = [x for x in result.stderr.replace("\r", "\n").splitlines() if x.strip()]
    assert lines and lines[-1].startswith("Error: "), result.stderr
    assert sum(x.startswith("Error: ") for x in lines) == 1 and "Traceback" not in result.output
    return lines[-1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------ faults


def _worker(*args: str) -> list[str]:
    return [sys.executable, str(WORKER), *args]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(WORKER.parent), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
def test_kill9_during_recipe_evaluation_resumes_without_recomputing(tmp_path, register_plugin):
    slow = ", ".join(f'{{ dataset = "slow-shapes", n = 16, seed = {s} }}' for s in (1, 2, 3, 4))
    recipe = _recipe(tmp_path, "killed", steps=2, datasets=f"[{slow}]")
    run = tmp_path / "run"
    log = tmp_path / "worker.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            _worker("recipe", "run", str(recipe), "--run-dir", str(run)),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=fh,
        )
    folder = run / "eval" / "clip" / "pgd"

    def finished() -> list[Path]:
        return [p for p in folder.glob("slow-shapes_*.json") if ".partial." not in p.name]

    deadline = time.time() + 240
    while not finished() and time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in finished()}
    assert 1 <= len(done) < 4, "the kill landed after the first model's evaluation ended"
    assert (run / LOCK_NAME).is_file() and (run / "tecoa" / "done.json").is_file()
    trained = (run / "tecoa" / "final.pt").stat().st_mtime_ns
    logged = len(read_log(run))

    # the re-runs go in-process with the worker's own plugin under its own name: the cache key
    # covers the supplying plugin's name and code (docs/CACHES.md), so another plugin would
    # rightly recompute
    from recipe_worker import SlowPlugin

    register_plugin(SlowPlugin(), "recipe-worker")
    again = _run(str(recipe), "--run-dir", str(run))
    assert again.exit_code == 2
    assert "did not finish; pass --resume" in _error_line(again)

    resumed = _run(str(recipe), "--run-dir", str(run), "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "tecoa: already trained" in resumed.stderr
    assert (run / "tecoa" / "final.pt").stat().st_mtime_ns == trained
    events = read_log(run)[logged:]
    clip = [e for e in events if e["label"] == "clip"]
    assert {e["dataset"] + ".json" for e in clip if e["event"] == "skipped"} == set(done)
    assert len([e for e in clip if e["event"] == "computed"]) == 4 - len(done)
    for name, (mtime, text) in done.items():
        assert (folder / name).stat().st_mtime_ns == mtime and (folder / name).read_text() == text
    records = json.loads((run / "results.json").read_text())
    assert sorted((r["label"], r["dataset_key"]) for r in records) == sorted(
        (label, p.stem) for label in ("clip", "tecoa") for p in [*finished()]
    )
    assert not (run / LOCK_NAME).exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, bad):
    from clip_robust_ext.data import ProceduralShapes
    from clip_robust_ext.training import Defense, TrainConfig, train

    class Explodes(Defense):
        name = "explodes"

        def loss(self, batch, ctx):
            loss = torch.nn.functional.cross_entropy(ctx.model(batch.images), batch.labels)
            return (loss * bad if ctx.step == 4 else loss), {}

    with pytest.raises(ClipxError) as info:
        train(
            tiny_clip(),
            Explodes(),
            ProceduralShapes("train", n=32, seed=1),
            TrainConfig(max_steps=8, batch_size=8, checkpoint_every=2),
            tmp_path,
            progress=False,
        )
    message = str(info.value)
    assert f"non-finite loss ({bad})" in message and "at step 5" in message
    assert "last good checkpoint (step 4) is kept" in message and "\n" not in message
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "final.pt").exists()


def test_path_under_a_file_is_reported_before_any_work(tmp_path):
    recipe = _recipe(tmp_path)
    for target in (tmp_path / "a-file" / "run", Path("/dev/null/run")):
        (tmp_path / "a-file").write_text("")
        result = _run(str(recipe), "--run-dir", str(target))
        assert result.exit_code == 1
        assert f"cannot create run dir {target}: Not a directory" in _error_line(result)
    evaluated = CliRunner().invoke(
        cli,
        ["eval", "--model", "clipx-tiny", "--protocol", "clean", "--run-dir", "/dev/null/ev"],
        prog_name="clipx",
    )
    assert evaluated.exit_code == 1 and "cannot create run dir /dev/null/ev" in evaluated.stderr


def test_read_only_run_dir_is_reported_before_training(tmp_path):
    recipe = _recipe(tmp_path)
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        probe = locked / "probe"
        try:
            probe.write_text("x")
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip(
                "running as root (or with CAP_DAC_OVERRIDE): chmod does not stop writes here; "
                "the unwritable case is covered by test_path_under_a_file_is_reported_before_any_work"
            )
        result = _run(str(recipe), "--run-dir", str(locked))
        assert result.exit_code == 1
        assert f"run dir {locked} is not writable: Permission denied" in _error_line(result)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(stat.S_IRWXU)


def test_full_disk_is_reported_before_training(tmp_path, monkeypatch):
    recipe = _recipe(tmp_path)
    run = tmp_path / "run"
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 10 * 2**20, 10 * 2**20)
    )
    result = _run(str(recipe), "--run-dir", str(run))
    assert result.exit_code == 1
    assert f"run dir {run}: only 10 MiB free; need at least 50 MiB" in _error_line(result)
    assert not (run / "tecoa").exists() and not (run / LOCK_NAME).exists()


def test_disk_full_mid_training_keeps_the_last_checkpoint_and_resumes(tmp_path, monkeypatch):
    """ENOSPC while writing the second checkpoint: the first stays intact, no temp file is left,
    the lock is released, and the next run continues from it."""
    import clip_robust_ext.training.checkpoint as ckpt
    from clip_robust_ext.utils.io import atomic_write

    recipe = _recipe(tmp_path, steps=6)
    run = tmp_path / "run"
    real, calls = ckpt.atomic_torch_save, []

    def fills_up(path, obj):
        calls.append(path)
        if len(calls) < 2:
            return real(path, obj)

        def writer(fh):
            fh.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        return atomic_write(path, writer)

    monkeypatch.setattr(ckpt, "atomic_torch_save", fills_up)
    result = _run(str(recipe), "--run-dir", str(run), "--set", "evaluate.n_samples=8")
    assert result.exit_code == 1
    assert "No space left on device" in _error_line(result)
    folder = run / "tecoa"
    assert load_checkpoint(folder / "checkpoint.pt")["step"] == 2
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []
    assert not (folder / "final.pt").exists() and not (run / LOCK_NAME).exists()

    monkeypatch.setattr(ckpt, "atomic_torch_save", real)  # space freed
    again = _run(str(recipe), "--run-dir", str(run), "--set", "evaluate.n_samples=8")
    assert again.exit_code == 0, again.output
    steps = [json.loads(x)["step"] for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 3-4 of the failed run were redone once, not twice
    assert load_checkpoint(folder / "checkpoint.pt")["step"] == 6


def test_a_live_run_dir_refuses_a_second_run_with_or_without_resume(tmp_path):
    recipe = _recipe(tmp_path)
    run = tmp_path / "busy"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (run / LOCK_NAME).write_text(
            json.dumps({"pid": sleeper.pid, "host": os.uname().nodename, "started": time.time()})
        )
        for extra in ([], ["--resume"]):
            result = _run(str(recipe), "--run-dir", str(run), *extra)
            assert result.exit_code == 2
            assert f"is in use by clipx process {sleeper.pid}" in _error_line(result)
        evaluated = CliRunner().invoke(
            cli,
            ["eval", "--model", "clipx-tiny", "--protocol", "clean", "--run-dir", str(run)],
            prog_name="clipx",
        )
        assert evaluated.exit_code == 2 and f"clipx process {sleeper.pid}" in evaluated.stderr
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing was touched
    finally:
        sleeper.kill()
        sleeper.wait()


# --------------------------------------------------------------------------- untrusted files


class _Exploit:
    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_crafted_training_checkpoint_is_refused_on_resume(tmp_path):
    recipe = _recipe(tmp_path)
    run = tmp_path / "run"
    sentinel = tmp_path / "code-ran"
    (run / "tecoa").mkdir(parents=True)
    with open(run / "tecoa" / "checkpoint.pt", "wb") as fh:
        pickle.dump({"format": "clipx-train-checkpoint", "model": _Exploit(sentinel)}, fh)
    result = _run(str(recipe), "--run-dir", str(run))
    assert result.exit_code == 2
    line = _error_line(result)
    assert "checkpoint.pt: refused to load" in line and "would run code" in line
    assert not sentinel.exists()


def test_crafted_model_checkpoint_is_refused_everywhere_it_can_be_named(tmp_path):
    sentinel = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump(_Exploit(sentinel), fh)
    recipe = _recipe(tmp_path)
    for i, args in enumerate(
        (
            ["--set", f'model.checkpoint="{evil}"'],  # recipe [model] checkpoint
            ["--set", f'model.pretrained="{evil}"'],  # open_clip's pretrained
        )
    ):
        result = _run(str(recipe), "--run-dir", str(tmp_path / f"run{i}"), *args)
        assert result.exit_code == 2, result.output
        assert "would run code" in _error_line(result)
    assert not sentinel.exists()


_PACKAGE = [REPO / "clip_robust_ext", *sorted((REPO / "plugins").glob("clipx_*"))]


def _calls(name: str):
    for root in _PACKAGE:
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    func = node.func
                    called = (
                        func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                    )
                    if called == name:
                        yield path.relative_to(REPO), node


def test_every_torch_load_is_weights_only_and_nothing_unpickles_or_evals():
    loads = list(_calls("load"))
    torch_loads = [
        (p, n)
        for p, n in loads
        if isinstance(n.func, ast.Attribute) and ast.unparse(n.func) == "torch.load"
    ]
    assert torch_loads, "expected the checkpoint readers to use torch.load"
    for path, node in torch_loads:
        kw = {k.arg: k.value for k in node.keywords}
        assert "weights_only" in kw and ast.literal_eval(kw["weights_only"]) is True, (
            f"{path}:{node.lineno}: torch.load without weights_only=True"
        )
    for path, node in loads + list(_calls("loads")):
        assert ast.unparse(node.func) not in ("pickle.load", "pickle.loads", "yaml.load"), (
            f"{path}:{node.lineno}: {ast.unparse(node.func)}"
        )
    for name in ("eval", "exec", "__import__"):
        found = [f"{p}:{n.lineno}" for p, n in _calls(name) if isinstance(n.func, ast.Name)]
        assert found == [], f"{name}() called at {found}"
    # import_module only for the package's own lazy attributes (constant names), never a value
    # that came from a recipe
    for path, node in _calls("import_module"):
        arg = node.args[0] if node.args else None
        assert path.parts[:1] == ("clip_robust_ext",), f"{path}:{node.lineno}"
        assert isinstance(arg, ast.JoinedStr | ast.Name | ast.Constant), f"{path}:{node.lineno}"


def test_plugins_are_explicit_and_listed(monkeypatch):
    """Only entry points of group 'clipx' load (CLIPX_LOAD_PLUGINS narrows it, see
    test_plugins.py); `clipx plugins` lists every one with its distribution and version."""
    result = CliRunner().invoke(cli, ["plugins", "--json"], prog_name="clipx")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    rows = {p["name"]: p for p in doc["plugins"]}
    from importlib import metadata

    declared = {ep.name for ep in metadata.entry_points(group="clipx")}
    assert declared <= set(rows) | {e["name"] for e in doc["load_errors"]}
    for name in ("builtin", "laat", "mmcoa", "saft"):
        assert rows[name]["distribution"] == "clip-robust-ext" and rows[name]["version"]


# ---------------------------------------------------------- adversarial-example integrity


class _Broken:
    """An image attack that breaks the threat model in one way (chosen by `how`)."""

    def __init__(self, model, eps, how: str = "over-eps"):
        self.model, self.eps, self.how = model, eps, how

    def __call__(self, x, y):
        if self.how == "over-eps":
            return (x + 3 * self.eps).clamp(0, 1)
        if self.how == "nan":
            return x * float("nan")
        if self.how == "out-of-range":
            return x * 2 + 0.5
        if self.how == "shape":
            return x[:, :, :-1]
        if self.how == "train-mode":
            self.model.train()
            return x.clone()
        raise AssertionError(self.how)


@pytest.fixture
def broken_attacks(register_plugin):
    def register_attacks(register):
        for how in ("over-eps", "nan", "out-of-range", "shape", "train-mode"):
            register(
                f"broken-{how}",
                lambda model, eps, _h=how: _Broken(model, eps, _h),
                modality="image",
                description="test: returns invalid examples",
            )

    register_plugin(
        SimpleNamespace(register_attacks=hookimpl(register_attacks)), "reliability-broken"
    )


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("over-eps", "broken-over-eps: Linf distance 0.011765 exceeds eps 0.003922"),
        ("nan", "broken-nan: returned non-finite pixels"),
        ("out-of-range", "broken-out-of-range: pixels outside [0, 1]"),
        ("shape", "broken-shape: returned shape"),
        ("train-mode", "broken-train-mode: the attack switched the model to train mode"),
    ],
    ids=["over-eps", "nan", "out-of-range", "shape", "train-mode"],
)
def test_an_attack_returning_invalid_examples_is_caught_and_named(
    broken_attacks, tmp_path, how, message
):
    assets()
    args = ["eval", "--model", "clipx-small-c10", "--protocol", "pgd", "--attack", f"broken-{how}",
            "--eps", "1/255", "--dataset", "cifar10-jpegs", "--n", "8", "--templates", "tecoa",
            "--run-dir", str(tmp_path / "ev")]  # fmt: skip
    result = CliRunner().invoke(cli, args, prog_name="clipx")
    assert result.exit_code == 1, result.output
    assert message in _error_line(result)
    assert not list((tmp_path / "ev").rglob("cifar10-jpegs_test.json"))  # nothing was counted


def _frozen_state(zs: torch.nn.Module):
    return (
        zs.training,
        [m.training for m in zs.modules()],
        [p.requires_grad for p in zs.parameters()],
    )


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("fgsm", {"eps": "2/255"}),
        ("pgd", {"eps": "2/255", "alpha": "1/255", "steps": 2}),
        ("kl-pgd", {"eps": "2/255", "steps": 2}),
        ("autoattack", {"eps": "2/255", "version": "custom", "attacks": ["apgd-ce"], "n_iter": 2}),
        ("broken-train-mode", {"eps": 2 / 255}),
    ],
)
def test_attacks_restore_train_mode_and_grad_flags(broken_attacks, name, params):
    from clip_robust_ext.data import ProceduralShapes

    zs = ZeroShotClassifier(tiny_clip(), ["circle", "square", "triangle", "star"], ["a {}"])
    zs.train()
    zs.clip.visual.eval()  # a mixed state: the tower in eval, the rest in train
    for i, p in enumerate(zs.parameters()):
        p.requires_grad_(i % 3 != 0)
    before = _frozen_state(zs)
    data = ProceduralShapes("test", n=4, seed=0)
    x = torch.stack([data[i][0] for i in range(4)])
    y = torch.tensor([0, 1, 2, 3])
    atk = build_attack(name, zs, **params)
    if name.startswith("broken"):
        with pytest.raises(AdversarialCheckError, match="switched the model to train mode"):
            atk(x, y)
    else:
        atk(x, y)
    assert _frozen_state(zs) == before


# ----------------------------------------------------------------------------- determinism


def _without_timing(records: list[dict]) -> list[dict]:
    """Records minus what measures time (the provenance's CPU and wall seconds included)."""
    drop = {"elapsed_s", "computed_at", "cpu_s", "wall_s"}
    out = [{k: v for k, v in r.items() if k not in drop} for r in records]
    for r in out:
        if isinstance(r.get("provenance"), dict):
            r["provenance"] = {k: v for k, v in r["provenance"].items() if k not in drop}
    return out


def test_same_seed_same_numbers_for_training_and_evaluation(tmp_path):
    """Two runs of one recipe: bitwise-equal trained weights, identical evaluation records."""
    recipe = _recipe(tmp_path, "twice", steps=3)
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        result = _run(str(recipe), "--run-dir", str(run))
        assert result.exit_code == 0, result.output
    a, b = (read_state_dict(run / "tecoa" / "final.pt") for run in runs)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs between two identical runs"
    ra, rb = (json.loads((run / "results.json").read_text()) for run in runs)
    assert _without_timing(ra) == _without_timing(rb)
    assert [r["label"] for r in ra] == ["clip", "tecoa"]
    assert all(math.isfinite(r["clean_acc"]) for r in ra)
    la, lb = (
        [json.loads(x)["loss"] for x in (run / "tecoa" / "metrics.jsonl").read_text().splitlines()]
        for run in runs
    )
    assert la == lb and len(la) == 3
    # per-sample flags too, not just the summaries
    for key in ("clip", "tecoa"):
        fa, fb = ((run / "eval" / key / "pgd").glob("*.json") for run in runs)
        sa = {p.name: json.loads(p.read_text())["samples"] for p in fa}
        sb = {p.name: json.loads(p.read_text())["samples"] for p in fb}
        assert sa == sb and sa
