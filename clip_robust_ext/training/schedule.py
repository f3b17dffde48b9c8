"""Which parameters train, the optimiser and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ClipxUsageError
from ..models.prompts import PROMPT_ATTR
from .config import TrainConfig, parse_trainable


def trainable_names(model: nn.Module, spec: str) -> list[str]:
    """Parameter names of an open_clip CLIP that `spec` trains.

    visual: the image tower; text: everything else (token/positional embeddings, text transformer,
    projection, logit_scale); both: all; prompt: only a learned prompt context (both towers
    frozen; models/prompts.py); last-k:N: the last N vision blocks + ln_post + proj."""
    kind, k = parse_trainable(spec)
    names = [n for n, _ in model.named_parameters()]
    if kind == "both":
        return names
    if kind == "prompt":
        return [n for n in names if n.startswith(f"{PROMPT_ATTR}.")]
    if kind == "visual":
        return [n for n in names if n.startswith("visual.")]
    if kind == "text":
        return [n for n in names if not n.startswith("visual.")]
    blocks = getattr(
        getattr(getattr(model, "visual", None), "transformer", None), "resblocks", None
    )
    if blocks is None:
        raise ClipxUsageError(f"trainable '{spec}': the image tower has no transformer blocks")
    n_blocks = len(blocks)
    if k > n_blocks:
        raise ClipxUsageError(f"trainable '{spec}': the image tower has only {n_blocks} blocks")
    keep = tuple(f"visual.transformer.resblocks.{i}." for i in range(n_blocks - k, n_blocks))
    heads = ("visual.ln_post.", "visual.proj")
    return [n for n in names if n.startswith(keep) or n.startswith(heads)]


def set_trainable(model: nn.Module, spec: str) -> list[nn.Parameter]:
    """requires_grad on exactly the chosen parameters; returns them in model order."""
    chosen = set(trainable_names(model, spec))
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
        if name in chosen:
            params.append(p)
    if not params:
        raise ClipxUsageError(f"trainable '{spec}' selects no parameters")
    return params


def _no_decay(name: str, p: nn.Parameter) -> bool:
    # open_clip's rule: no weight decay on gains, biases, norms and the temperature
    return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    exempt = (lambda n, p: False) if config.decay_all_params else _no_decay
    decay = [p for n, p in named if not exempt(n, p)]
    no_decay = [p for n, p in named if exempt(n, p)]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, betas=config.betas, eps=config.eps)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)
    raise ClipxUsageError(f"unknown optimizer {config.optimizer!r}")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base lr for optimiser step `step` (0-based), TeCoA's cosine_lr:
    linear warm-up (step+1)/warmup, then 0.5 (1 + cos(pi e / es)) or constant."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    e = min(step - warmup_steps, decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * e / decay_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    """LambdaLR over lr_factor (its state_dict holds only numbers, so weights_only loading works)."""

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, config.warmup_steps, config.schedule)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
