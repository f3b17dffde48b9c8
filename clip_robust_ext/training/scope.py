"""`scope`: which parameters of the chosen towers a defense trains, for any defense loss.

The loss objects are untouched: a scope acts on the model before the Trainer builds its
optimiser. `prepare` (before a resumed state is loaded, after the frozen reference copy is taken,
so the reference is always the base) records the base fingerprint and adds LoRA adapters;
`select` sets requires_grad; `finish` writes the adapter artifact and folds LoRA into the weights,
so the returned model and final.pt are plain open_clip ones.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ClipxUsageError
from ..models import LoadedCLIP, prompt_context_of
from ..models import adapters as A
from ..models.checkpoints import model_fingerprint
from ..utils.io import atomic_write_text
from .config import TrainConfig, parse_trainable
from .schedule import set_trainable

ADAPTER_DIR = "adapter"


@dataclass
class Scope:
    """A run's scope: its settings, the base it starts from, and what it trains."""

    config: TrainConfig
    base_fingerprint: str | None = None
    lora: dict[str, Any] | None = None  # peft settings of a LoRA run
    trainable_names: list[str] = field(default_factory=list)
    trainable_count: int = 0
    hooks: list[Any] = field(default_factory=list)  # frozen BatchNorm kept in eval mode

    @property
    def kind(self) -> str:
        return self.config.scope

    @property
    def towers(self) -> tuple[str, ...]:
        kind = parse_trainable(self.config.trainable)[0]
        return A.towers_of(kind) if kind in ("visual", "text", "both") else ()

    def summary(self) -> dict[str, Any]:
        """What cards, run records and cache keys carry."""
        return {
            "scope": self.kind,
            "towers": list(self.towers),
            "trainable_params": self.trainable_count,
            "base_fingerprint": self.base_fingerprint,
            **({"lora": self.lora} if self.lora else {}),
            **({"first_blocks": self.config.first_blocks} if self.kind == "first-blocks" else {}),
        }


def prepare(loaded: LoadedCLIP, config: TrainConfig) -> Scope:
    """Fingerprint the base and, for LoRA, add the (zero-initialised) adapters."""
    model = loaded.model
    if A.has_lora(model):
        raise ClipxUsageError("the model already carries LoRA adapters; merge them first")
    scope = Scope(config, base_fingerprint=model_fingerprint(model))
    if config.scope in ("full", "prompt"):
        return scope
    if config.scope == "lora":
        targets, params = A.default_lora_targets(model, scope.towers)
        scope.lora = {
            "rank": config.lora_rank,
            "alpha": config.lora_alpha,
            "dropout": config.lora_dropout,
            "targets": config.lora_targets or targets,
            # a user's regex names modules only (then "attn" is peft's MHA layer)
            "target_parameters": [] if config.lora_targets else params,
        }
        scope.trainable_names = _inject_seeded(model, scope.lora, config.seed)
    else:
        scope.trainable_names = A.first_blocks_names(model, scope.towers, config.first_blocks)
    return scope


def _inject_seeded(model: nn.Module, settings: dict[str, Any], seed: int) -> list[str]:
    """LoRA's random A matrices drawn from their own seeded stream: the training RNG (data
    order, attack noise) is then the same as a full-scope run's, and every rank starts equal."""
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        return A.inject_lora(model, settings)


def select(model: nn.Module, scope: Scope) -> list[nn.Parameter]:
    """requires_grad on exactly what the scope trains; frozen BatchNorm keeps its statistics."""
    config = scope.config
    if scope.kind == "full":
        params = set_trainable(model, config.trainable)
    elif scope.kind == "prompt":
        context = prompt_context_of(model)
        if context is None:
            raise ClipxUsageError(
                "scope 'prompt': this defense adds no prompt context to the model (APT does)"
            )
        params = set_trainable(model, "prompt")
    else:
        chosen = set(scope.trainable_names)
        params = []
        for name, p in model.named_parameters():
            p.requires_grad_(name in chosen)
            if name in chosen:
                params.append(p)
    scope.trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
    scope.trainable_count = sum(p.numel() for p in params)
    if scope.kind != "full":
        scope.hooks = _freeze_batchnorm(model)
    return params


def _eval_mode(module: nn.Module, args: Any) -> None:
    module.training = False


def _freeze_batchnorm(model: nn.Module) -> list[Any]:
    """BatchNorm layers whose parameters are frozen run in eval mode during training (running
    statistics used, never updated), so a frozen ResNet stage stays exactly the base's."""
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    return [
        m.register_forward_pre_hook(_eval_mode)
        for m in model.modules()
        if isinstance(m, norms) and not any(p.requires_grad for p in m.parameters(recurse=False))
    ]


def release(scope: Scope) -> None:
    """Remove the training-time hooks (the trained model behaves as a plain one)."""
    for handle in scope.hooks:
        handle.remove()
    scope.hooks = []


def finish(loaded: LoadedCLIP, scope: Scope, run_dir: Path, write: bool) -> None:
    """Write run_dir/adapter (rank 0) and fold LoRA into the weights on every rank."""
    params = dict(loaded.model.named_parameters())
    if scope.trainable_names:  # empty when a finished run is only re-exported
        scope.trainable_count = sum(params[n].numel() for n in scope.trainable_names if n in params)
    if scope.kind in ("lora", "first-blocks") and write:
        tensors = A.adapter_tensors(loaded.model, scope.kind, scope.trainable_names)
        meta = {
            **scope.summary(),
            "base": {
                "arch": loaded.arch,
                "pretrained": loaded.pretrained,
                "fingerprint": scope.base_fingerprint,
            },
        }
        A.save_adapter(run_dir / ADAPTER_DIR, tensors, meta)
    if A.has_lora(loaded.model):
        A.merge_lora(loaded.model)
    loaded.info["scope"] = scope.summary()
    if write:
        text = json.dumps(loaded.info["scope"], indent=2, sort_keys=True) + "\n"
        atomic_write_text(run_dir / A.SCOPE_NAME, text)


def announce(scope: Scope, total: int, enabled: bool) -> None:
    if enabled and scope.kind != "full":
        share = scope.trainable_count / max(total, 1)
        print(
            f"clipx: scope {scope.kind}: {scope.trainable_count:,} trainable parameters "
            f"({100 * share:.2f}% of {total:,})",
            file=sys.stderr,
        )
