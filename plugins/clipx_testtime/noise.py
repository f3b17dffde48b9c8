"""Gaussian input noise at every forward pass: the negative control for randomized defenses.

Adding fresh noise to the input (and optionally averaging the logits of a few noisy copies) is
the simplest randomized defense: its gradient is one draw's, its prediction changes between
calls, and attacks built for deterministic classifiers overrate it (a single-sample gradient
follows the noise; one scoring draw lets a sample that is wrong half the time count as robust).
It is registered so that clipx's randomness handling (determinism probe, EOT, worst of several
final draws) and its attack-strength checks have a case they must catch; it is not a defense
anyone should report as robust without EOT.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clip_robust_ext.api import ClipxUsageError, TestTimeDefense, parse_eps


class RandomNoise(TestTimeDefense):
    """logits = mean over `votes` draws of classifier(clip(x + sigma * N(0, 1), 0, 1)); fresh
    noise on every call, with or without gradients (deliberately non-deterministic)."""

    name = "noise"

    def __init__(self, sigma: float | str = 16 / 255, votes: int = 1) -> None:
        self.sigma = parse_eps(sigma, name="sigma")
        if isinstance(votes, bool) or not isinstance(votes, int) or votes < 1:
            raise ClipxUsageError(f"test-time defense 'noise': votes must be >= 1, got {votes!r}")
        self.votes = votes

    def logits(self, classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
        total = 0
        for _ in range(self.votes):
            noisy = (images + self.sigma * torch.randn_like(images)).clamp(0, 1)
            total = total + classifier(noisy)
        return total / self.votes

    def config(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "votes": self.votes}
