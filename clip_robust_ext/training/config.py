"""TrainConfig: every knob of the Trainer engine, with paper-lineage defaults.

Fields left as None are filled from the defense's `train_defaults` (e.g. TeCoA: SGD momentum 0.9;
FARE: AdamW), then from GLOBAL_DEFAULTS, so a recipe names only what it changes."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ClipxUsageError, closest

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant")
AMP_MODES = ("off", "bf16", "fp16")

GLOBAL_DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 1e-5,
    "momentum": 0.9,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "trainable": "visual",
}

# Fields that do not change the trained weights: they may differ between a run and its resume.
NON_SEMANTIC = ("checkpoint_every", "eval_every", "log_every", "num_workers")
# Fields added after runs existed: left out of the resume fingerprint while at these defaults, so
# a run started before they existed still resumes.
ADDED_LATER = {
    "decay_all_params": False,
    "channels_last": False,
    "compile": False,
    "scope": "full",
    "lora_rank": 8,
    "lora_alpha": 16.0,
    "lora_dropout": 0.0,
    "lora_targets": None,
    "first_blocks": 1,
}
SCOPES = ("full", "lora", "first-blocks", "prompt")


@dataclass
class TrainConfig:
    epochs: int = 1
    max_steps: int | None = None  # total optimiser steps; overrides epochs (data cycles as needed)
    batch_size: int = 32  # global batch (split evenly across ranks under torchrun)
    lr: float | None = None
    optimizer: str | None = None  # sgd | adam | adamw
    momentum: float | None = None  # sgd
    betas: tuple[float, float] | None = None  # adam / adamw
    eps: float | None = None  # adam / adamw epsilon (not an attack budget)
    weight_decay: float | None = None  # not applied to gains, biases, embeddings, logit_scale
    decay_all_params: bool = (
        False  # weight decay on every parameter (MMCoA's code: Adam wd 0.2 on all)
    )
    schedule: str = "cosine"  # cosine (linear warm-up, then cosine to 0) | constant (after warm-up)
    warmup_steps: int = 0
    trainable: str | None = None  # visual | text | both | prompt | last-k:N (None: defense's)
    # what trains inside the towers `trainable` names (docs/scopes.md): full | lora (peft LoRA on
    # attention/MLP projections or convs) | first-blocks (stem + first `first_blocks` blocks) |
    # prompt (a learned prompt context, e.g. APT's; towers frozen)
    scope: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str | None = None  # regex over module names; None: the tower type's default
    first_blocks: int = 1
    amp: str = "off"  # off | bf16 | fp16 (autocast on the loss; attacks always run in fp32)
    # speed options for the image tower during training (models/accelerate.py): other kernels, so
    # not bitwise eager; measured per tower type by `python -m benchmarks.run --only train_options`
    channels_last: bool = False
    compile: bool = False
    grad_clip: float | None = None  # max global grad norm
    clamp_logit_scale: bool = (
        True  # clamp logit_scale to [0, ln 100] after every step (TeCoA lineage)
    )
    checkpoint_every: int = 0  # steps; 0 = only at the end
    eval_every: int = 0  # steps; 0 = never (needs eval_fn)
    log_every: int = 1  # steps
    num_workers: int = 0
    seed: int = 0
    extras: dict[str, Any] = field(default_factory=dict)  # free-form, stored with checkpoints

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys are errors naming the closest field."""
        known = cls.fields()
        for key in values:
            if key not in known:
                raise ClipxUsageError(f"unknown training option '{key}'{closest(key, known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["betas"] is not None:
            out["betas"] = list(out["betas"])
        return out

    def validate(self) -> None:
        def positive_int(name: str, value: Any, allow_zero: bool = False) -> None:
            ok = (
                isinstance(value, int)
                and not isinstance(value, bool)
                and (value >= 0 if allow_zero else value > 0)
            )
            if not ok:
                raise ClipxUsageError(
                    f"{name} must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}"
                )

        positive_int("epochs", self.epochs)
        positive_int("batch_size", self.batch_size)
        if self.max_steps is not None:
            positive_int("max_steps", self.max_steps)
        for name in ("warmup_steps", "checkpoint_every", "eval_every", "num_workers"):
            positive_int(name, getattr(self, name), allow_zero=True)
        positive_int("log_every", self.log_every)
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ClipxUsageError(
                f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}{closest(str(self.optimizer), OPTIMIZERS)}"
            )
        if self.schedule not in SCHEDULES:
            raise ClipxUsageError(
                f"schedule must be one of {SCHEDULES}, got {self.schedule!r}{closest(str(self.schedule), SCHEDULES)}"
            )
        for name in ("channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ClipxUsageError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.decay_all_params, bool):
            raise ClipxUsageError(
                f"decay_all_params must be true or false, got {self.decay_all_params!r}"
            )
        if self.amp is True:
            self.amp = "bf16"
        if self.amp in (False, None):
            self.amp = "off"
        if self.amp not in AMP_MODES:
            raise ClipxUsageError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        for name in ("lr", "momentum", "eps", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if value is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ClipxUsageError(f"{name} must be a non-negative number, got {value!r}")
            setattr(self, name, float(value))
        if self.lr is not None and self.lr <= 0:
            raise ClipxUsageError(f"lr must be positive, got {self.lr!r}")
        if self.betas is not None:
            betas = tuple(self.betas)
            if len(betas) != 2 or not all(
                isinstance(b, (int, float)) and 0 <= b < 1 for b in betas
            ):
                raise ClipxUsageError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
            self.betas = (float(betas[0]), float(betas[1]))
        if self.trainable is not None:
            parse_trainable(self.trainable)
        self._validate_scope()
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ClipxUsageError(f"seed must be an integer, got {self.seed!r}")

    def _validate_scope(self) -> None:
        if self.scope not in SCOPES:
            raise ClipxUsageError(
                f"scope must be one of {SCOPES}, got {self.scope!r}{closest(str(self.scope), SCOPES)}"
            )
        for name in ("lora_rank", "first_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ClipxUsageError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.lora_alpha, (int, float)) or not self.lora_alpha > 0:
            raise ClipxUsageError(f"lora_alpha must be a positive number, got {self.lora_alpha!r}")
        if not isinstance(self.lora_dropout, (int, float)) or not 0 <= self.lora_dropout < 1:
            raise ClipxUsageError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        self.lora_alpha, self.lora_dropout = float(self.lora_alpha), float(self.lora_dropout)
        if self.lora_targets is not None:
            try:
                re.compile(self.lora_targets)
            except (re.error, TypeError) as exc:
                raise ClipxUsageError(
                    f"lora_targets must be a regex over module names, got {self.lora_targets!r} "
                    f"({exc})"
                ) from None
        kind = parse_trainable(self.trainable)[0] if self.trainable is not None else None
        if self.scope in ("lora", "first-blocks") and kind not in (None, "visual", "text", "both"):
            raise ClipxUsageError(
                f"scope {self.scope!r} applies to the towers trainable names: visual, text or "
                f"both, got trainable = {self.trainable!r}"
            )
        if self.scope == "prompt" and kind not in (None, "prompt"):
            raise ClipxUsageError(
                f"scope 'prompt' trains only a prompt context; trainable = {self.trainable!r} "
                "contradicts it"
            )

    def resolved(self, defense: Any = None) -> TrainConfig:
        """A copy with None fields filled: defense.train_defaults, then GLOBAL_DEFAULTS."""
        values = self.to_dict()
        if values["scope"] == "prompt" and values["trainable"] is None:
            values["trainable"] = "prompt"
        defense_defaults = dict(getattr(defense, "train_defaults", None) or {})
        if defense is not None and getattr(defense, "trainable", None):
            defense_defaults.setdefault("trainable", defense.trainable)
        for key, default in GLOBAL_DEFAULTS.items():
            if values.get(key) is None:
                values[key] = defense_defaults.get(key, default)
        for key, value in defense_defaults.items():
            if key not in GLOBAL_DEFAULTS and key in values and values[key] is None:
                values[key] = value
        return TrainConfig.from_dict(values)


def parse_trainable(spec: str) -> tuple[str, int | None]:
    """'visual' | 'text' | 'both' | 'prompt' | 'last-k:N' -> (kind, N)."""
    if spec in ("visual", "text", "both", "prompt"):
        return spec, None
    if isinstance(spec, str) and spec.startswith("last-k:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            k = 0
        if k > 0:
            return "last-k", k
    raise ClipxUsageError(
        f"trainable must be visual, text, both, prompt or last-k:N (N > 0), got {spec!r}"
    )
