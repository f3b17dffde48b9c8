"""Test-time defenses: code that acts on each input at inference and trains nothing.

A test-time defense is its own registry kind (`register_testtime_defenses`, `clipx testtime`)
rather than a `defenses` entry: a training defense is a loss the Trainer minimises, a test-time
defense is a function of (classifier, images) -> logits that the evaluation engine puts in front
of a (possibly fine-tuned) model. A protocol names them in `testtime`; the engine then scores
every model as is and once per test-time defense (label `<model>+<defense label>`), and attacks
each defended pipeline in the protocol's `testtime_modes`:

- "non-adaptive": the attack is computed on the undefended classifier, then the defended
  pipeline classifies the adversarial images (what most test-time-defense papers report);
- "adaptive": the attack runs on the defended pipeline itself (`DefendedClassifier`), with
  gradients through the defense where it is differentiable and whatever surrogate the defense
  gives where it is not (BPDA; EOT through attacks that average gradients over its randomness).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ClipxUsageError
from ..registry import get

MODES = ("non-adaptive", "adaptive")
_SPEC_KEYS = ("name", "label", "params")


class TestTimeDefense:
    """Base of test-time defenses. Subclasses implement `logits(classifier, images)`.

    Contract: `images` are (N, 3, H, W) in [0, 1]; the result is (N, C) logits of the defended
    pipeline. When `images.requires_grad` (an adaptive attack), the logits must carry the
    gradient the attacker should follow: exact where the defense is differentiable, a
    documented surrogate (BPDA) where not; randomness should then be fresh per call so that EOT
    attacks can average over it. Without gradients (scoring), the defense should be a
    deterministic function of each image so that clean, non-adaptive and adaptive numbers score
    the same pipeline."""

    __test__ = False  # not a pytest test class despite its name
    name = "testtime"

    def logits(self, classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Hyper-parameters stored with every result (default: public attributes)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class DefendedClassifier(nn.Module):
    """A ZeroShotClassifier behind a test-time defense, attackable as a plain classifier."""

    def __init__(self, classifier: nn.Module, defense: TestTimeDefense, label: str = "") -> None:
        super().__init__()
        self.classifier = classifier
        self.defense = defense
        self.label = label or defense.name

    @property
    def device(self) -> torch.device:
        return self.classifier.device

    @property
    def classnames(self) -> list[str]:
        return self.classifier.classnames

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def class_matrix(self) -> torch.Tensor:
        return self.classifier.class_matrix()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.defense.logits(self.classifier, images)


def testtime_spec(item: Any) -> dict[str, Any]:
    """'ttc' | {name, label?, params?, **params} -> {name, label, params}."""
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ClipxUsageError(
            f"testtime: each entry must be a name or a table with 'name', got {item!r}"
        )
    params = item.get("params") or {}
    if not isinstance(params, dict):
        raise ClipxUsageError(f"test-time defense '{item['name']}': params must be a table")
    params = {**params, **{k: v for k, v in item.items() if k not in _SPEC_KEYS}}
    label = item.get("label") or item["name"]
    if not isinstance(label, str) or not label or "+" in label:
        raise ClipxUsageError(f"test-time defense '{item['name']}': bad label {label!r}")
    return {"name": item["name"], "label": label, "params": params}


def check_modes(modes: Any, where: str) -> list[str]:
    """The protocol's `testtime_modes`: a non-empty list drawn from MODES."""
    if isinstance(modes, str):
        modes = [modes]
    if (
        not isinstance(modes, (list, tuple))
        or not modes
        or any(m not in MODES for m in modes)
        or len(set(modes)) != len(modes)
    ):
        raise ClipxUsageError(f"{where}: testtime_modes must be a list drawn from {MODES}")
    return list(modes)


def build_testtime(spec: dict[str, Any]) -> TestTimeDefense:
    """The registered test-time defense a (checked) spec names, built with its params."""

    defense = get("testtime", spec["name"]).obj(**spec["params"])
    if not callable(getattr(defense, "logits", None)):
        raise ClipxUsageError(
            f"test-time defense '{spec['name']}' did not build an object with logits(classifier, images)"
        )
    return defense
