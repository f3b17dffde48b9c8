"""The Trainer engine: a defense supplies the per-batch loss, this module owns the loop.

train() selects the trainable parameters, builds optimiser + schedule (+ AMP scaler), provides the
TrainContext (zero-shot model, frozen reference, fp32 attacks), shards data under torchrun,
averages gradients with DDP, clamps the logit scale, logs metrics, evaluates periodically, and
writes atomic checkpoints from which a killed run resumes bit-exactly.

Distributed design: DDP wraps a small module whose forward() *is* the defense loss. DDP only
averages gradients of computations made inside its forward(); defenses call encode_image,
encode_text, attacks and the reference model freely, so wrapping the bare CLIP would miss them.
Wrapping the loss keeps DDP's bucketed all-reduce overlapped with backward and needs nothing from
defense authors. Attacks inside the loss run with the parameters frozen (attack_mode), so their
inner backward passes never touch DDP's gradient hooks. find_unused_parameters (an extra walk
of the autograd graph every step) is set from what the defense trains: the first step runs with
it, and if every trainable parameter got a gradient on every rank DDP is rebuilt without it
(a defense may fix it with a `find_unused_parameters` attribute, e.g. one whose set of used
parameters changes between steps).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..attacks import attack_mode, build_attack, verify_adversarial
from ..data.checks import stack_images
from ..errors import ClipxError, ClipxUsageError
from ..evaluation import evaluate
from ..models import DEFAULT_TEMPLATES, LoadedCLIP, ZeroShotClassifier, save_open_clip_checkpoint
from ..models.accelerate import accelerated
from ..models.prompts import adopt_prompt_context
from ..registry import get
from ..utils.io import append_text, atomic_write_text
from ..utils.seeding import seed_everything
from . import distributed as D
from . import scope as S
from .checkpoint import (
    CHECKPOINT_NAME,
    FINAL_NAME,
    load_checkpoint,
    plain,
    rng_state_tensors,
    save_checkpoint,
    set_rng_state_tensors,
)
from .config import ADDED_LATER, NON_SEMANTIC, TrainConfig
from .defense import Batch, Defense, TrainContext
from .schedule import build_optimizer, build_scheduler

METRICS_NAME = "metrics.jsonl"
LOGIT_SCALE_MAX = math.log(100.0)
EvalFn = Callable[[LoadedCLIP, int], Any]


# -- small pieces ------------------------------------------------------------------------------
class _Fp32Attack:
    """A built attack that always runs in fp32 with autocast off and the model frozen in eval
    mode, and whose image outputs are checked against the threat model."""

    def __init__(self, built: Any, model: nn.Module):
        self.built, self.model = built, model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.built, name)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor):
        with attack_mode(self.model), torch.autocast(images.device.type, enabled=False):
            out = self.built(images.float(), labels)
        eps = getattr(self.built, "eps", None)
        if out.images is not images and eps is not None and math.isfinite(float(eps)):
            verify_adversarial(
                images.float(),
                out.images,
                float(eps),
                getattr(self.built, "norm", "Linf"),
                getattr(self.built, "name", "attack"),
            )
        return out


def fp32_attack_builder(name: str, model: nn.Module, **params: Any) -> _Fp32Attack:
    """ctx.build_attack used by the Trainer: registered attack, fp32, frozen, verified."""
    return _Fp32Attack(build_attack(name, model, **params), model)


class _DefenseLoss(nn.Module):
    """forward(batch) = defense.loss(batch, ctx): the unit DDP wraps (see module docstring)."""

    def __init__(self, model: ZeroShotClassifier, defense: Defense, ctx: TrainContext):
        super().__init__()
        self.model = model
        if isinstance(defense, nn.Module):
            self.defense = defense  # a defense with its own trainable parameters (prompts, heads)
        self._defense, self._ctx = defense, ctx

    def forward(self, batch: Batch):
        return self._defense.loss(batch, self._ctx)


class _Indexed(Dataset):
    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, label = self.dataset[i][:2]
        return image, int(label), i


def _collate(items):
    images, labels, index = zip(*items)
    return stack_images(images, "training data", index), torch.tensor(labels), torch.tensor(index)


def caption_function(
    dataset: Any, classnames: list[str], templates: list[str]
) -> Callable[[int, int], str]:
    """caption(index, label): the dataset's own caption when it has one, else a template picked
    deterministically from the index (crc32, so the choice does not correlate with i mod C)."""
    own = getattr(dataset, "caption", None)
    if callable(own):
        return lambda i, label: own(i)
    return lambda i, label: templates[zlib.crc32(str(i).encode()) % len(templates)].format(
        classnames[label]
    )


def _as_defense(defense: Defense | str) -> Defense:
    if isinstance(defense, str):
        return get("defenses", defense).obj()
    if not hasattr(defense, "loss"):
        raise ClipxUsageError(
            f"defense must be a Defense or a registered defense name, got {type(defense).__name__}"
        )
    return defense


def _as_config(config: TrainConfig | dict | None) -> TrainConfig:
    if config is None:
        return TrainConfig()
    if isinstance(config, dict):
        return TrainConfig.from_dict(config)
    if not isinstance(config, TrainConfig):
        raise ClipxUsageError(
            f"config must be a TrainConfig or a dict, got {type(config).__name__}"
        )
    return config


def _device_for(loaded: LoadedCLIP, info: D.DistInfo) -> torch.device:
    if info.enabled and info.backend == "nccl":
        return torch.device("cuda", info.local_rank)
    return next(loaded.model.parameters()).device


def _fingerprint(
    config: TrainConfig, defense: Defense, loaded: LoadedCLIP, n: int, classnames: list[str]
) -> dict:
    semantic = {
        k: v
        for k, v in config.to_dict().items()
        if k not in NON_SEMANTIC and not (k in ADDED_LATER and v == ADDED_LATER[k])
    }
    return plain(
        {
            "config": semantic,
            "defense": {"name": defense.name, "config": defense.config()},
            "arch": loaded.arch,
            "dataset_size": n,
            "classnames": classnames,
        }
    )


def _check_resumable(state: dict, fingerprint: dict, path: Path) -> None:
    old = state.get("fingerprint", {})
    diffs = []
    for key in fingerprint:
        if key == "config":
            keys = set(old.get("config", {})) | set(fingerprint["config"])
            diffs += [
                f"{k}: {old.get('config', {}).get(k)!r} -> {fingerprint['config'].get(k)!r}"
                for k in sorted(keys)
                if old.get("config", {}).get(k) != fingerprint["config"].get(k)
            ]
        elif old.get(key) != fingerprint[key]:
            diffs.append(f"{key} differs")
    if diffs:
        raise ClipxUsageError(
            f"{path} was written by a different training setup ({'; '.join(diffs[:4])}); "
            "use another --run-dir, or delete that folder to train from scratch"
        )


def _restart_without_checkpoint(metrics: Path, config: TrainConfig, ckpt_path: Path) -> None:
    """Resume found no checkpoint: if one must have been written (the log passed a checkpoint
    step), it was lost - refuse rather than retrain silently; else start over from step 0
    without keeping the earlier run's metric lines (no duplicates)."""
    steps = []
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                steps.append(int(json.loads(line).get("step", 0)))
            except (ValueError, TypeError, AttributeError):
                continue
    last = max(steps, default=0)
    if config.checkpoint_every and last >= config.checkpoint_every:
        raise ClipxUsageError(
            f"{ckpt_path.parent}: training logged up to step {last} but {ckpt_path.name} is "
            f"missing; restore it to resume, or delete {ckpt_path.parent} to train from scratch"
        )
    if steps:
        _truncate_metrics(metrics, 0)


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records logged after the checkpoint (they will be logged again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


class _Logger:
    """metrics.jsonl (+ TensorBoard when installed) on rank 0."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / METRICS_NAME
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # tensorboard is optional
                self.tb = None

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        append_text(self.path, json.dumps(record, default=str) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@contextlib.contextmanager
def _rng_fork():
    """Run evaluation without moving the training RNG streams (resume stays exact)."""
    saved = rng_state_tensors()
    try:
        yield
    finally:
        set_rng_state_tensors(saved)


# -- the engine --------------------------------------------------------------------------------
def train(
    loaded: LoadedCLIP,
    defense: Defense | str,
    dataset: Dataset,
    config: TrainConfig | dict | None,
    run_dir: str | Path,
    classnames: list[str] | None = None,
    templates: list[str] | None = None,
    resume: bool = True,
    eval_fn: EvalFn | None = None,
    progress: bool = True,
) -> LoadedCLIP:
    """Train `loaded` in place with `defense` on `dataset` ((image01, label) items); returns it.

    classnames default to dataset.classnames; templates (default "This is a photo of a {}") build
    the zero-shot head ctx.model and the captions of datasets without `caption(i)`. With resume,
    an existing run_dir/checkpoint.pt of the same setup is continued (a finished one is loaded and
    returned at once). Writes run_dir/{checkpoint.pt, final.pt (open_clip format), metrics.jsonl}.
    eval_fn(loaded, step) -> dict|list runs every config.eval_every steps on every rank (so it may
    shard), in eval mode, without disturbing the training RNG; rank 0 logs what it returns.

    Steps: set-up (this function), `_Run` (optimiser, state restored from a checkpoint), its
    `loop` of `train_step`s with `checkpoint` and evaluation, then `_finish` (export)."""
    defense = _as_defense(defense)
    config = _as_config(config).resolved(defense)
    info = D.init_distributed()
    run_dir = Path(run_dir)
    classnames, templates = _names_and_templates(dataset, classnames, templates)
    n = len(dataset)
    spe = D.ShardedBatchSampler.steps_per_epoch(n, config.batch_size)
    if spe == 0:
        raise ClipxUsageError(
            f"the dataset has {n} samples, fewer than one batch of {config.batch_size}"
        )
    total = config.max_steps if config.max_steps is not None else config.epochs * spe

    device = _device_for(loaded, info)
    model = loaded.model.to(device)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / CHECKPOINT_NAME
    fingerprint = _fingerprint(config, defense, loaded, n, classnames)
    state = (
        load_checkpoint(ckpt_path, map_location=device) if resume and ckpt_path.is_file() else None
    )
    if state is not None:
        _check_resumable(state, fingerprint, ckpt_path)
    elif resume and info.is_main:
        _restart_without_checkpoint(run_dir / METRICS_NAME, config, ckpt_path)

    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    seed_everything(config.seed + info.rank)
    # the reference is the *starting* model, copied before any resumed weights are loaded
    reference = _reference(loaded, defense, classnames, templates, device)
    scope = S.prepare(loaded, config)  # after the reference: the reference is the base
    if state is not None:
        adopt_prompt_context(model, state["model"])  # a context the defense created, resumed
        model.load_state_dict(state["model"])
    logger = _Logger(run_dir, info.is_main)
    run: _Run | None = None
    try:
        if state is not None and state["step"] >= total:
            _finish(loaded, run_dir, info, defense, total, scope)
            return loaded
        setup = _Setup(
            defense,
            config,
            info,
            device,
            run_dir,
            ckpt_path,
            fingerprint,
            total,
            spe,
            logger,
            scope,
        )
        with accelerated(loaded, config.channels_last, config.compile) as fast:
            run = _Run(loaded, setup, reference, classnames, templates, fast)
            if state is not None:
                run.restore(state)
            run.loop(dataset, eval_fn, progress)
            run.checkpoint()
        _finish(loaded, run_dir, info, defense, total, scope)
        return loaded
    finally:
        if run is not None and run.bar is not None:  # an error must not land on the bar's line
            run.bar.close()
        logger.close()
        S.release(scope)
        for name, p in model.named_parameters():
            p.requires_grad_(flags.get(name, True))
        model.eval()


def _names_and_templates(
    dataset: Dataset, classnames: list[str] | None, templates: list[str] | None
) -> tuple[list[str], list[str]]:
    if classnames is None:
        classnames = getattr(dataset, "classnames", None)
        if not classnames:
            raise ClipxUsageError("train(): the dataset has no `classnames`; pass classnames=")
    return list(classnames), list(templates) if templates else list(DEFAULT_TEMPLATES)


def _reference(
    loaded: LoadedCLIP,
    defense: Defense,
    classnames: list[str],
    templates: list[str],
    device: torch.device,
) -> ZeroShotClassifier | None:
    """A frozen copy of the starting model, for defenses that need one."""
    if not defense.needs_reference:
        return None
    ref_loaded = copy.deepcopy(loaded)
    ref_loaded.model.eval().requires_grad_(False)
    return ZeroShotClassifier(ref_loaded, classnames, templates).to(device).eval()


@dataclass
class _Setup:
    """What a run is: fixed before its first step."""

    defense: Defense
    config: TrainConfig
    info: D.DistInfo
    device: torch.device
    run_dir: Path
    ckpt_path: Path
    fingerprint: dict
    total: int  # optimiser steps
    spe: int  # steps per epoch
    logger: _Logger
    scope: S.Scope


class _Run:
    """One training run's state: model, zero-shot head, optimiser, schedule, step counters.
    The steps a reader follows: __init__ (optimiser and schedule), restore (from a checkpoint),
    loop -> train_step / advance, checkpoint."""

    def __init__(
        self,
        loaded: LoadedCLIP,
        setup: _Setup,
        reference: ZeroShotClassifier | None,
        classnames: list[str],
        templates: list[str],
        fast: LoadedCLIP | None = None,
    ):
        """`fast`: `loaded` with the training speed options (accelerated()); the zero-shot head
        the defense trains through encodes images with them, evaluation and export do not."""
        config, device, defense = setup.config, setup.device, setup.defense
        self.loaded, self.setup, self.model = loaded, setup, loaded.model
        self.classnames, self.templates = classnames, templates
        self.zs = ZeroShotClassifier(fast or loaded, classnames, templates).to(device)
        self.ctx = TrainContext(
            model=self.zs,
            reference=reference,
            classnames=classnames,
            templates=templates,
            device=device,
            build_attack=fp32_attack_builder,
            extras={"dist": setup.info, "config": config, "run_dir": setup.run_dir},
        )
        # set-up first: it may add trainable parts to the model (a prompt context) to select
        defense.setup(self.ctx)
        self.params = S.select(self.model, setup.scope)
        S.announce(setup.scope, sum(p.numel() for p in self.model.parameters()), setup.info.is_main)
        if isinstance(defense, nn.Module):
            defense.to(device)
            self.params += [p for p in defense.parameters() if p.requires_grad]
        self.module = _DefenseLoss(self.zs, defense, self.ctx)
        self.optimizer = build_optimizer(self.module, config)
        self.scheduler = build_scheduler(self.optimizer, config, setup.total)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
        self.scaler = torch.amp.GradScaler(device.type) if config.amp == "fp16" else None
        self.step = self.epoch = self.step_in_epoch = 0
        self.runner: nn.Module = self.module
        self.bar: Any = None

    def restore(self, state: dict) -> None:
        """Continue from a training checkpoint: optimiser, schedule, counters, RNG streams."""
        info, defense = self.setup.info, self.setup.defense
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if isinstance(defense, nn.Module) and state.get("defense_state"):
            defense.load_state_dict(state["defense_state"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        rngs = state.get("rng") or []
        if len(rngs) == info.world_size:
            set_rng_state_tensors(rngs[info.rank])
        else:  # resumed with another process count: data order stays exact, noise does not
            if info.is_main:
                print(
                    f"clipx: resuming with {info.world_size} processes (checkpoint: {len(rngs)}); "
                    "attack noise will differ from an uninterrupted run",
                    file=sys.stderr,
                )
            seed_everything(self.setup.config.seed + info.rank + 7919 * self.step)
        if info.is_main:
            _truncate_metrics(self.setup.logger.path, self.step)

    def checkpoint(self) -> None:
        """checkpoint.pt with everything an exact resume needs (rank 0 writes it)."""
        setup = self.setup
        rngs = D.gather_objects(rng_state_tensors())
        if setup.info.is_main:
            save_checkpoint(
                setup.ckpt_path,
                {
                    "step": self.step,
                    "epoch": self.epoch,
                    "step_in_epoch": self.step_in_epoch,
                    "total_steps": setup.total,
                    "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                    "defense_state": setup.defense.state_dict()
                    if isinstance(setup.defense, nn.Module)
                    else None,
                    "rng": rngs,
                    "world_size": setup.info.world_size,
                    "fingerprint": setup.fingerprint,
                    "config": plain(setup.config.to_dict()),
                    "arch": self.loaded.arch,
                },
            )
        D.barrier()

    def loop(self, dataset: Dataset, eval_fn: EvalFn | None, progress: bool) -> None:
        """Steps until `total`, epoch by epoch, from wherever the counters stand."""
        setup, config = self.setup, self.setup.config
        info, device = setup.info, setup.device
        settle = False
        if info.enabled:
            declared = getattr(setup.defense, "find_unused_parameters", None)
            settle = declared is None  # decided after the first step
            self.runner = self._ddp(True if declared is None else bool(declared))
        caption_of = caption_function(dataset, self.classnames, self.templates)
        self.bar = _progress(setup.total, self.step, progress and info.is_main, setup.defense.name)
        self.started = time.perf_counter()
        self.model.train()
        self.zs.train()
        n = len(dataset)
        while self.step < setup.total:
            sampler = D.ShardedBatchSampler(
                n,
                config.batch_size,
                config.seed,
                self.epoch,
                self.step_in_epoch,
                info.rank,
                info.world_size,
            )
            loader = DataLoader(
                _Indexed(dataset),
                batch_sampler=sampler,
                num_workers=config.num_workers,
                collate_fn=_collate,
                # own generator: creating a loader must not consume the global RNG
                generator=torch.Generator().manual_seed(config.seed * 31 + self.epoch),
            )
            for images, labels, index in loader:
                captions = [caption_of(int(i), int(y)) for i, y in zip(index, labels)]
                batch = Batch(images.to(device), labels.to(device), captions, index)
                record = self.train_step(batch)
                if settle:
                    self._settle_unused_parameters()
                    settle = False
                self.advance(record, eval_fn)
                if self.step >= setup.total:
                    break
                if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                    self.checkpoint()
            # an epoch boundary reached inside the loop already advanced (epoch, step_in_epoch)
        self.bar.close()

    def _ddp(self, find_unused: bool) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        device = self.setup.device
        return DDP(
            self.module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused,
        )

    def _settle_unused_parameters(self) -> None:
        """After the first step (run with the search on): drop DDP's per-step search for unused
        parameters when every trainable parameter got a gradient on every rank."""
        unused = [
            n for n, p in self.module.named_parameters() if p.requires_grad and p.grad is None
        ]
        flag = D.all_reduce_max(torch.tensor([float(len(unused))], device=self.setup.device))
        if float(flag[0]) == 0:
            self.runner = self._ddp(False)
        if self.setup.info.is_main:
            what = (
                "every trainable parameter gets a gradient: find_unused_parameters=False"
                if float(flag[0]) == 0
                else f"{int(flag[0])} trainable parameter(s) got no gradient (e.g. {unused[:2]}): "
                "find_unused_parameters=True"
            )
            print(f"clipx: DDP: {what}", file=sys.stderr)

    def train_step(self, batch: Batch) -> dict[str, Any]:
        """One optimiser step on `batch`; returns its metrics record (loss, lr, defense metrics)."""
        setup, config, device = self.setup, self.setup.config, self.setup.device
        optimizer, scaler = self.optimizer, self.scaler
        self.ctx.step, self.ctx.epoch = self.step, self.epoch
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            loss, metrics = self.runner(batch)
        names = sorted(metrics)
        # loss and metrics in one device tensor: the finiteness check below is the
        # step's only host sync (deliberate: a NaN must stop the run before the update)
        values = torch.stack([_scalar(loss, device)] + [_scalar(metrics[k], device) for k in names])
        values = D.all_reduce_mean(values)
        if not torch.isfinite(values[0]):
            ckpt_path = setup.ckpt_path
            last = (
                f"the last good checkpoint (step {_ckpt_step(ckpt_path)}) is kept in {ckpt_path}"
                if ckpt_path.is_file()
                else "no checkpoint had been written yet"
            )
            raise ClipxError(
                f"{setup.defense.name}: non-finite loss ({float(values[0])}) at step "
                f"{self.step + 1}; training stopped, {last}"
            )
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        if config.grad_clip:
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, config.grad_clip)
        lr = optimizer.param_groups[0]["lr"]
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        self.scheduler.step()
        scale = getattr(self.model, "logit_scale", None)
        if config.clamp_logit_scale and scale is not None and scale.requires_grad:
            # only a trained scale: a frozen one is the checkpoint's (SigLIP's exceeds ln 100)
            with torch.no_grad():
                self.model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
        return {
            "step": self.step + 1,
            "epoch": self.epoch,  # the epoch this step's batch came from
            "lr": lr,
            "loss": float(values[0]),
            **{k: float(v) for k, v in zip(names, values[1:].tolist())},
        }

    def advance(self, record: dict[str, Any], eval_fn: EvalFn | None) -> None:
        """Count the step, log it, and evaluate when it is time."""
        setup, config = self.setup, self.setup.config
        self.step += 1
        self.step_in_epoch += 1
        if self.step_in_epoch >= setup.spe:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        step, total = self.step, setup.total
        if step % config.log_every == 0 or step == total:
            setup.logger.log({**record, "time_s": round(time.perf_counter() - self.started, 3)})
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}")
        if (
            eval_fn is not None
            and config.eval_every
            and (step % config.eval_every == 0 or step == total)
        ):
            _evaluate(eval_fn, self.loaded, self.zs, step, setup.logger)


def evaluation_callback(protocol: Any, run_dir: str | Path, label: str = "step") -> EvalFn:
    """eval_fn for train(): the evaluation engine's `evaluate` on the current weights every
    eval_every steps (records under run_dir, label '<label>-<step>'); logs a compact summary."""

    def run(loaded: LoadedCLIP, step: int) -> list[dict[str, Any]]:

        records = evaluate(loaded, protocol, run_dir, label=f"{label}-{step}", progress=False)
        keys = ("dataset", "attack", "eps", "n", "clean_acc", "robust_acc")
        return [{k: r.get(k) for k in keys if k in r} for r in records]

    return run


def _scalar(value: Any, device: torch.device) -> torch.Tensor:
    """A float64 0-d tensor on `device`, without reading a device tensor back to the host."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, dtype=torch.float64).reshape(())
    return torch.tensor(float(value), dtype=torch.float64, device=device)


def _ckpt_step(path: Path) -> int | str:
    try:
        return load_checkpoint(path)["step"]
    except Exception:
        return "?"


def _progress(total: int, initial: int, enabled: bool, name: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        file=sys.stderr,
        desc=f"train {name}",
        dynamic_ncols=True,
        leave=False,
    )


def _evaluate(
    eval_fn: EvalFn, loaded: LoadedCLIP, zs: ZeroShotClassifier, step: int, logger: _Logger
) -> None:
    loaded.model.eval()
    try:
        with _rng_fork():
            result = eval_fn(loaded, step)
    finally:
        loaded.model.train()
        zs.train()
    if result is not None:
        logger.log({"step": step, "eval": result})


def _finish(
    loaded: LoadedCLIP,
    run_dir: Path,
    info: D.DistInfo,
    defense: Defense,
    total: int,
    scope: S.Scope,
) -> None:
    S.finish(loaded, scope, run_dir, info.is_main)
    if info.is_main:
        save_open_clip_checkpoint(loaded.model, run_dir / FINAL_NAME)
    D.barrier()
    loaded.info.update(
        {
            "trained_by": defense.name,
            "train_steps": total,
            "run_dir": str(run_dir),
            "checkpoint": str(run_dir / FINAL_NAME),
        }
    )
