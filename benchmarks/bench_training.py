"""Training figures: a Trainer step of TeCoA / MMCoA vs its parts, and 2-process DDP vs 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from clip_robust_ext.attacks import attack_mode
from clip_robust_ext.models import ZeroShotClassifier

from .common import CIFAR10, SINGLE_TEMPLATE, Row, check, cifar_batch, contrastive_fb, image_fb
from .common import zero_shot_fb as _zero_shot_fb
from .timing import CLOCKS, median, summary

REPO = Path(__file__).resolve().parents[1]


class InMemory(Dataset):
    """(image in [0, 1], label) items from tensors, with `classnames` (data loading is not what
    these figures measure)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, names: list[str]):
        self.images, self.labels, self.classnames = images, labels, list(names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


class StepClock:
    """eval_fn for `train()` with eval_every=1: stamps the end of every step and, between steps,
    runs `measure()` (whose time is excluded from the steps), so step times and component times
    interleave step by step."""

    def __init__(self, measure: Callable[[], dict[str, float]] | None = None, clock: str = "cpu"):
        self.now = CLOCKS[clock]
        self.measure = measure
        self.steps: list[float] = []
        self.components: list[dict[str, float]] = []
        self._last: float | None = None

    def __call__(self, loaded, step: int) -> None:
        now = self.now()
        if self._last is not None:
            self.steps.append(now - self._last)
        if self.measure is not None:
            self.components.append(self.measure())
        self._last = self.now()
        return None


def _timed_parts(parts: dict[str, Callable[[], None]]) -> Callable[[], dict[str, float]]:
    now = CLOCKS["cpu"]

    def measure() -> dict[str, float]:
        out = {}
        for name, fn in parts.items():
            start = now()
            fn()
            out[name] = now() - start
        return out

    return measure


def defense_step(
    defense_name: str,
    params: dict[str, Any],
    batch_size: int,
    steps: int,
    skip: int,
    attack_steps: int,
    bound: float | None,
) -> Row:
    """Trainer step time / (attack passes + one forward+backward), measured step by step."""
    from clip_robust_ext.registry import get
    from clip_robust_ext.training import TrainConfig, train

    from .common import small_c10

    loaded = small_c10()  # trained in place: a fresh copy
    images, labels = cifar_batch(batch_size * steps, offset=5)
    data = InMemory(images, labels, CIFAR10)
    defense = get("defenses", defense_name).obj(**params)
    zs = ZeroShotClassifier(loaded, CIFAR10)
    x, y = images[:batch_size], labels[:batch_size]
    x_adv = (x + torch.empty_like(x).uniform_(-1 / 255, 1 / 255)).clamp(0, 1)
    captions = [SINGLE_TEMPLATE[0].format(CIFAR10[int(c)]) for c in y]
    attack_fb = image_fb(zs, x, attack_steps)

    def attack_part() -> None:
        with attack_mode(zs):  # the Trainer's attacks run frozen, in eval mode
            attack_fb()

    if defense_name == "mmcoa":
        fb = contrastive_fb(zs, x, x_adv, captions)
    else:
        fb = _zero_shot_fb(zs, x_adv, y)
    clock = StepClock(_timed_parts({"attack": attack_part, "fb": fb}))
    config = TrainConfig(max_steps=steps, batch_size=batch_size, eval_every=1, seed=0)
    with tempfile.TemporaryDirectory(prefix="clipx-bench-") as run_dir:
        train(loaded, defense, data, config, run_dir, eval_fn=clock, progress=False)
    step_s = clock.steps[skip:]
    comps = clock.components[skip:] or clock.components
    t_attack = median([c["attack"] for c in comps])
    t_fb = median([c["fb"] for c in comps])
    ratio = median(step_s) / (t_attack + t_fb)
    label = {"tecoa": "TeCoA", "mmcoa": "MMCoA"}.get(defense_name, defense_name)
    return {
        "section": "training",
        "id": f"train_step_{defense_name}",
        "figure": f"{label} Trainer step / ({attack_steps} attack fwd+bwd + 1 training fwd+bwd)",
        "setting": f"clipx-small-c10, batch {batch_size}, PGD-{attack_steps}"
        + (", charswap captions (cached per epoch)" if defense_name == "mmcoa" else ""),
        "value": ratio,
        "op": "<=" if bound else "info",
        "bound": bound,
        "ok": check(ratio, "<=", bound) if bound else None,
        "detail": {
            "step": summary(step_s),
            "attack_passes_s": t_attack,
            "train_fb_s": t_fb,
            "steps_measured": len(step_s),
            "steps_skipped": skip,
            "note": "step = end of one Trainer step to the end of the next, CPU time; the "
            "components are timed between steps (excluded from them)",
        },
    }


# -- DDP ---------------------------------------------------------------------------------------
def _launch(
    nproc: int, out: Path, steps: int, batch_size: int, timeout: float, find_unused: str = "auto"
) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1", CLIPX_BENCH_THREADS="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    worker = REPO / "benchmarks" / "ddp_worker.py"
    args = [str(out), "--steps", str(steps), "--batch-size", str(batch_size)]
    args += ["--find-unused", find_unused]
    if nproc == 1:
        cmd = [sys.executable, str(worker), *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes=1",
            f"--nproc_per_node={nproc}",
            str(worker),
            *args,
        ]
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"DDP worker ({nproc} proc) failed: {done.stderr[-2000:]}")
    data = json.loads(out.read_text())
    data["launch_wall_s"] = time.perf_counter() - start
    data["load1"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    said = [line for line in done.stderr.splitlines() if line.startswith("clipx: DDP:")]
    data["find_unused"] = (
        None if not said else "find_unused_parameters=True" in said[0]
    )  # what the Trainer decided after step 1 (None: 1 process, or declared by the defense)
    return data


def ddp_throughput(
    batch_size: int, steps: int, skip: int, rounds: int, timeout: float = 600
) -> Row:
    """Global throughput (images/s, wall clock, steady-state steps) of 2 gloo processes vs 1,
    same global batch, TeCoA (PGD-2) on clipx-small-c10, one thread per process. A third launch,
    1 process at the per-rank batch, separates DDP's own cost (all-reduce, bucketing, the
    unused-parameter search) from the machine's: step(1 proc, B/2) / step(2 procs, B). A fourth,
    2 processes with DDP's unused-parameter search forced on every step (the Trainer's setting
    before it decided it from the first step), measures that search."""
    settings = [(1, batch_size, "auto"), (2, batch_size, "auto"), (1, batch_size // 2, "auto")]
    settings.append((2, batch_size, "true"))
    runs: dict[tuple[int, int, str], list[dict[str, Any]]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory(prefix="clipx-bench-ddp-") as tmp:
        for r in range(rounds):
            for nproc, bs, unused in settings if r % 2 == 0 else settings[::-1]:
                out = Path(tmp) / f"r{r}-n{nproc}-b{bs}-{unused}.json"
                runs[(nproc, bs, unused)].append(_launch(nproc, out, steps, bs, timeout, unused))

    def step(key, field="step_wall"):
        return median([s for run in runs[key] for s in run[field][skip:]])

    one, two, half, forced = settings
    thr = {n: b / step((n, b, u)) for n, b, u in (one, two)}
    ratio = thr[2] / thr[1]
    return {
        "section": "training",
        "id": "ddp_2proc_vs_1proc",
        "figure": "2-process DDP (gloo, CPU) throughput / 1 process",
        "setting": f"TeCoA PGD-2, global batch {batch_size}, 1 thread per process, "
        f"{os.cpu_count()} CPUs (shared)",
        "value": ratio,
        "op": "info",
        "bound": None,
        "ok": None,
        "detail": {
            "images_per_s_1proc": thr[1],
            "images_per_s_2proc": thr[2],
            "step_wall_s_1proc": step(one),
            "step_wall_s_2proc": step(two),
            "step_wall_s_1proc_half_batch": step(half),
            "ddp_efficiency_wall": step(half) / step(two),
            "step_cpu_s_rank0_1proc": step(one, "step_cpu"),
            "step_cpu_s_rank0_2proc": step(two, "step_cpu"),
            "step_cpu_s_1proc_half_batch": step(half, "step_cpu"),
            "ddp_efficiency_cpu": step(half, "step_cpu") / step(two, "step_cpu"),
            "step_wall_s_2proc_find_unused_forced": step(forced),
            "step_cpu_s_rank0_2proc_find_unused_forced": step(forced, "step_cpu"),
            "find_unused_forced_over_decided_cpu": step(forced, "step_cpu") / step(two, "step_cpu"),
            "find_unused_forced_over_decided_wall": step(forced) / step(two),
            "find_unused_decided": runs[two][0].get("find_unused"),
            "ideal_ratio": 2.0,
            "launches_per_setting": rounds,
            "steps_per_launch": steps,
            "steps_skipped": skip,
        },
    }


def train_option_speedup(
    model: str, option: str, batch_size: int, steps: int, skip: int, rounds: int
) -> Row:
    """TeCoA (PGD-2) Trainer step, eager / with `option` (TrainConfig.channels_last or .compile),
    on a ViT (clipx-small-c10) or ResNet (procedural-small) image tower. Runs alternate
    (eager, option, option, eager, ...), each from a fresh copy of the model; steady-state steps
    only (`skip` first steps per run: compilation, warm-up)."""
    import copy

    from clip_robust_ext.registry import get
    from clip_robust_ext.training import TrainConfig, train

    from .common import small_c10

    base = small_c10() if model == "clipx-small-c10" else get("models", model).obj(progress=False)
    images, labels = cifar_batch(batch_size * steps, offset=11)
    data = InMemory(images, labels, CIFAR10)
    arms = {"eager": {}, "option": {option: True}}
    times: dict[str, list[float]] = {"eager": [], "option": []}
    firsts: dict[str, list[float]] = {"eager": [], "option": []}
    loads: list[list[float]] = []
    losses: dict[str, list[float]] = {}
    for r in range(rounds):
        for arm in list(arms) if r % 2 == 0 else list(arms)[::-1]:
            clock = StepClock()
            config = TrainConfig(
                max_steps=steps, batch_size=batch_size, eval_every=1, seed=0, **arms[arm]
            )
            load0 = os.getloadavg()[0]
            with tempfile.TemporaryDirectory(prefix="clipx-bench-") as run_dir:
                train(
                    copy.deepcopy(base),
                    get("defenses", "tecoa").obj(),
                    data,
                    config,
                    run_dir,
                    eval_fn=clock,
                    progress=False,
                )
                metrics = Path(run_dir, "metrics.jsonl").read_text().splitlines()
            loads.append([round(load0, 2), round(os.getloadavg()[0], 2)])
            times[arm] += clock.steps[skip:]
            firsts[arm].append(clock.steps[0] if clock.steps else float("nan"))
            losses.setdefault(arm, [json.loads(m)["loss"] for m in metrics if '"loss"' in m])
    ratio = median(times["eager"]) / median(times["option"])
    tower = "ResNet" if model == "procedural-small" else "ViT"
    return {
        "section": "train_options",
        "id": f"train_{option}_{model}",
        "figure": f"TeCoA Trainer step eager / with {option} (speedup), CPU time",
        "setting": f"{model} ({tower} image tower), batch {batch_size}, PGD-2",
        "value": ratio,
        "op": "info",
        "bound": None,
        "ok": None,
        "detail": {
            "eager": summary(times["eager"]),
            "option": summary(times["option"]),
            "second_step_s": firsts,  # the first timed step of each run (compiles, if compile)
            "max_loss_diff": max(abs(a - b) for a, b in zip(losses["eager"], losses["option"])),
            "load1_per_run": loads,
            "steps_per_run": steps,
            "steps_skipped": skip,
            "runs_per_arm": rounds,
        },
    }
