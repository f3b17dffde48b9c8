"""The defense contract: a small object that computes a loss for a batch (it may call attacks).

The Trainer engine owns everything else (loop, optimiser, schedule, AMP, DDP, checkpoints,
logging), so a defense plugin is a loss function with defaults, e.g.

    class TeCoA(Defense):
        name = "tecoa"
        def loss(self, batch, ctx):
            x_adv = ctx.attack("pgd", eps=1/255, alpha=1/255, steps=2)(batch.images, batch.labels).images
            return F.cross_entropy(ctx.model(x_adv), batch.labels), {}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..attacks import build_attack
from ..models import ZeroShotClassifier


@dataclass
class Batch:
    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    labels: torch.Tensor  # (N,) class indices into ctx.classnames
    captions: list[str]  # one caption per image (templated class name when the data has none)
    index: torch.Tensor | None = None  # dataset indices, when known


@dataclass
class TrainContext:
    model: ZeroShotClassifier  # the model being trained; its class matrix covers ctx.classnames
    reference: ZeroShotClassifier | None  # frozen copy of the starting model (needs_reference)
    classnames: list[str]
    templates: list[str]
    device: torch.device
    step: int = 0
    epoch: int = 0
    build_attack: Callable[..., Any] | None = None  # set by the Trainer: (name, model, **params)
    extras: dict[str, Any] = field(default_factory=dict)
    _attacks: dict[Any, Any] = field(default_factory=dict)

    def attack(self, name: str, model: ZeroShotClassifier | None = None, **params: Any):
        """A registered attack bound to ctx.model (or `model`), built once and reused.

        The Trainer's builder runs attacks in fp32 and eval mode even when training uses AMP."""
        target = model if model is not None else self.model
        key = (name, id(target), tuple(sorted((k, repr(v)) for k, v in params.items())))
        if key not in self._attacks:
            if self.build_attack is None:
                self._attacks[key] = build_attack(name, target, **params)
            else:
                self._attacks[key] = self.build_attack(name, target, **params)
        return self._attacks[key]


class Defense:
    """Subclass and implement `loss`. Class attributes are defaults a recipe may override."""

    name: str = ""
    trainable: str = "visual"  # 'visual' | 'text' | 'both' | 'last-k:N' (last N vision blocks)
    needs_reference: bool = False  # the Trainer then provides ctx.reference (frozen, eval mode)
    # TrainConfig values this method uses when the recipe leaves them unset (None), e.g.
    # {"optimizer": "adamw", "lr": 1e-5, "weight_decay": 1e-4}; see TrainConfig.resolved
    train_defaults: dict[str, Any] = {}

    def setup(self, ctx: TrainContext) -> None:
        """Called once before training (e.g. to precompute text matrices)."""

    def loss(
        self, batch: Batch, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """(loss to minimise, metrics to log). Metrics may be floats or 0-d tensors; detached
        tensors are gathered on the device with the loss, so logging adds no host sync."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Hyper-parameters, stored with checkpoints and results."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}
