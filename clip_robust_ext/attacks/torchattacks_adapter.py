"""Every torchattacks attack, registered under its lowercase name (pgd, apgd, cw, square ...).

The ZeroShotClassifier is a plain logits model in [0, 1] pixel space, so torchattacks takes it as
is; this adapter only parses budgets written as '4/255', runs the attack with frozen parameters in
eval mode (restoring the previous state) and exposes eps/norm for the integrity check."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..params import checked
from ..utils.eps import parse_eps
from .base import attack_mode

_SKIP = {
    "MultiAttack",
    "LGV",
    "AutoAttack",
}  # need other attacks / data; AutoAttack has its own adapter
_BUDGET_KEYS = ("eps", "alpha")
_L2 = {"PGDL2", "PGDRSL2", "DeepFool", "CW", "EADL1", "EADEN"}
_UNBOUNDED = {"CW", "DeepFool", "EADL1", "EADEN", "SparseFool", "JSMA", "OnePixel", "Pixle"}


def torchattacks_classes() -> dict[str, type]:
    """Every torchattacks attack class by lower-case name (the registry's image attacks)."""
    import torchattacks

    return {
        name.lower(): getattr(torchattacks, name)
        for name in torchattacks.__all__
        if name not in _SKIP and inspect.isclass(getattr(torchattacks, name, None))
    }


class TorchattacksAttack:
    """A torchattacks Attack run with frozen weights in eval mode, in fp32."""

    def __init__(self, cls: type, model: nn.Module, **params: Any):
        for key in _BUDGET_KEYS:
            if key in params and cls.__name__ not in _UNBOUNDED:
                params[key] = parse_eps(
                    params[key], name=key, max_value=1.0 if key == "alpha" else 1.0
                )
        self.cls_name = cls.__name__
        self.model = model
        self.attack = cls(model, **params)
        self.params = params
        self.eps = (
            float(getattr(self.attack, "eps", float("inf")))
            if self.cls_name not in _UNBOUNDED
            else float("inf")
        )
        norm = getattr(self.attack, "norm", None)
        self.norm = norm if isinstance(norm, str) else ("L2" if self.cls_name in _L2 else "Linf")

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with attack_mode(self.model), torch.autocast(images.device.type, enabled=False):
            return self.attack(images.float(), labels).detach()

    def __repr__(self) -> str:
        return f"torchattacks.{self.cls_name}({self.params})"


def factory_for(cls: type) -> Callable[..., TorchattacksAttack]:
    """The registry factory of a torchattacks-style Attack class: `factory(model, **params)`,
    with the class's own parameters as its signature (checked by name on every call, read by
    recipes and `clipx attacks`)."""

    def build(model: nn.Module, **params: Any) -> TorchattacksAttack:
        return TorchattacksAttack(cls, model, **params)

    build.__doc__ = f"torchattacks.{cls.__name__}"
    return checked(build, f"attack '{cls.__name__.lower()}'", signature=inspect.signature(cls))
