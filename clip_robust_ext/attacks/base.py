"""What an attack is, for the evaluation engine and the defenses.

Registered attack factories take the ZeroShotClassifier and parameters and return a callable
`attack(images, labels) -> AttackOutput`-compatible result:
- image attacks return adversarial images (a torchattacks `Attack` qualifies as is);
- text attacks return a ZeroShotClassifier over perturbed class prompts (`AttackOutput.model`);
- multimodal attacks return both.
`build_attack` normalises the three into `AttackOutput` so callers need not care.
Retrieval attacks (modality "retrieval", e.g. SGA) perturb a gallery's images and captions
together: `attack(images, texts, text_owner) -> RetrievalAttackOutput`; retrieval protocols call
them, `build_attack` refuses them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import AdversarialCheckError, ClipxUsageError
from ..registry import get


@dataclass
class AttackOutput:
    images: torch.Tensor  # adversarial (or clean, for text-only attacks) images in [0, 1]
    model: nn.Module | None = (
        None  # classifier to score them with (perturbed prompts), None = unchanged
    )
    info: dict[str, Any] = field(default_factory=dict)  # e.g. text-attack goal scores


@dataclass
class RetrievalAttackOutput:
    images: torch.Tensor  # adversarial images in [0, 1], one per gallery image
    texts: list[str]  # adversarial captions, in the order of the gallery's texts
    info: dict[str, Any] = field(default_factory=dict)  # e.g. text-attack counts


def _submodules(model: nn.Module) -> list[nn.Module]:
    """`model` and all its submodules, walked without building dotted names."""
    out, stack = [], [model]
    while stack:
        module = stack.pop()
        out.append(module)
        stack.extend(m for m in module._modules.values() if m is not None)
    return out


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters while attacking; the previous state is restored after.

    Attacks nest (the Trainer's fp32 wrapper, the adapter and the evaluation engine each enter
    this), so only what needs changing is changed: eval()/train() recurse through every module
    and ran even when nothing was in train mode, ~2 ms per entry on clipx-small (benchmarks/).
    Afterwards every module is back in its own mode (a frozen tower or BatchNorm kept in eval
    inside a training model stays in eval) and every parameter has its own requires_grad."""
    modules = _submodules(model)
    params = [p for m in modules for p in m._parameters.values() if p is not None]
    flags = [p.requires_grad for p in params]
    modes = [m.training for m in modules]
    switched = any(modes)
    if switched:
        model.eval()
    for p, flag in zip(params, flags):
        if flag:
            p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(params, flags):
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        # module by module (the attack may also have switched some to train mode)
        for m, mode in zip(modules, modes):
            if m.training != mode:
                m.training = mode


class BuiltAttack:
    """A registered attack bound to a model, returning AttackOutput for any modality."""

    def __init__(
        self,
        name: str,
        modality: str,
        impl: Any,
        params: dict[str, Any],
        model: nn.Module | None = None,
    ):
        self.name, self.modality, self.impl, self.params = name, modality, impl, params
        self.model = model  # run under attack_mode: its train/eval mode and grad flags survive

    @property
    def eps(self) -> float | None:
        return getattr(self.impl, "eps", self.params.get("eps"))

    @property
    def norm(self) -> str:
        return getattr(self.impl, "norm", self.params.get("norm", "Linf"))

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> AttackOutput:
        if isinstance(self.model, nn.Module):
            with attack_mode(self.model):
                out = self.impl(images, labels)
                if any(m.training for m in _submodules(self.model)):
                    raise AdversarialCheckError(
                        f"{self.name}: the attack switched the model to train mode; attacks must "
                        "leave it in eval mode (its mode and grad flags are restored now)"
                    )
        else:
            out = self.impl(images, labels)
        if isinstance(out, AttackOutput):
            return out
        if isinstance(out, torch.Tensor):
            return AttackOutput(images=out.detach())
        if isinstance(out, nn.Module):
            return AttackOutput(images=images, model=out)
        if isinstance(out, tuple) and len(out) == 2:
            return AttackOutput(images=out[0].detach(), model=out[1])
        raise TypeError(
            f"attack '{self.name}' returned {type(out).__name__}; expected images, a model or both"
        )

    def __repr__(self) -> str:
        return f"BuiltAttack({self.name!r}, modality={self.modality!r}, params={self.params})"


def build_attack(name: str, model: nn.Module, **params: Any) -> BuiltAttack:
    """Look up a registered attack and bind it to `model` with `params`."""
    entry = get("attacks", name)
    if entry.modality == "retrieval":
        raise ClipxUsageError(
            f"attack '{name}' attacks image-text retrieval (images and their captions together); "
            "use it as a mode of a retrieval protocol, e.g. protocol 'coattack-retrieval' with "
            f"modes = [..., '{name}']"
        )
    impl = entry.obj(model, **params)
    return BuiltAttack(name, entry.modality or "image", impl, params, model)
