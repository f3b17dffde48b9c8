"""What an attack is, for the evaluation engine and the defenses.

Registered attack factories take the ZeroShotClassifier and parameters and return a callable
`attack(images, labels) -> AttackOutput`-compatible result:
- image attacks return adversarial images (a torchattacks `Attack` qualifies as is);
- text attacks return a ZeroShotClassifier over perturbed class prompts (`AttackOutput.model`);
- multimodal attacks return both.
`build_attack` normalises the three into `AttackOutput` so callers need not care.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..registry import get


@dataclass
class AttackOutput:
    images: torch.Tensor  # adversarial (or clean, for text-only attacks) images in [0, 1]
    model: nn.Module | None = None  # classifier to score them with (perturbed prompts), None = unchanged
    info: dict[str, Any] = field(default_factory=dict)  # e.g. text-attack goal scores


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters while attacking; the previous state is restored after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


class BuiltAttack:
    """A registered attack bound to a model, returning AttackOutput for any modality."""

    def __init__(self, name: str, modality: str, impl: Any, params: dict[str, Any]):
        self.name, self.modality, self.impl, self.params = name, modality, impl, params

    @property
    def eps(self) -> float | None:
        return getattr(self.impl, "eps", self.params.get("eps"))

    @property
    def norm(self) -> str:
        return getattr(self.impl, "norm", self.params.get("norm", "Linf"))

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> AttackOutput:
        out = self.impl(images, labels)
        if isinstance(out, AttackOutput):
            return out
        if isinstance(out, torch.Tensor):
            return AttackOutput(images=out.detach())
        if isinstance(out, nn.Module):
            return AttackOutput(images=images, model=out)
        if isinstance(out, tuple) and len(out) == 2:
            return AttackOutput(images=out[0].detach(), model=out[1])
        raise TypeError(f"attack '{self.name}' returned {type(out).__name__}; expected images, a model or both")

    def __repr__(self) -> str:
        return f"BuiltAttack({self.name!r}, modality={self.modality!r}, params={self.params})"


def build_attack(name: str, model: nn.Module, **params: Any) -> BuiltAttack:
    """Look up a registered attack and bind it to `model` with `params`."""
    entry = get("attacks", name)
    impl = entry.obj(model, **params)
    return BuiltAttack(name, entry.modality or "image", impl, params)
