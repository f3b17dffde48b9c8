"""Randomized smoothing (Cohen, Rosenfeld and Kolter, 2019): a certified L2 radius for any classifier.

The smoothed classifier g(x) returns the class the base classifier f returns most often on
x + N(0, sigma^2 I). CERTIFY picks a candidate class from n0 noisy draws, estimates its
probability from n fresh draws, and certifies the radius sigma * Phi^-1(p_lower) when the
Clopper-Pearson lower bound p_lower exceeds 1/2; otherwise it abstains (label ABSTAIN). The
noise is added in [0, 1] pixel space, before the model's own normalisation, so radii are in the
same units as the L2 attack budgets. Each sample's draws come from a generator seeded per call:
the same seed gives the same certificates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.stats import binomtest, norm
from torch import nn

from ..errors import ClipxUsageError

ABSTAIN = -1


@dataclass(frozen=True)
class Certificate:
    """One sample's outcome: the predicted class (ABSTAIN = -1) and its certified L2 radius."""

    label: int
    radius: float  # 0.0 when abstaining
    p_lower: float  # one-sided (1 - alpha) Clopper-Pearson lower bound on P(f(x + noise) = label)
    count: int  # estimation draws that returned `label`

    def to_dict(self) -> dict:
        return asdict(self)


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion (scipy's exact CI)."""
    return float(binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low)


def certified_radius(sigma: float, p_lower: float) -> float:
    """sigma * Phi^-1(p_lower): Cohen et al.'s Theorem 1 with p_B bounded by 1 - p_A."""
    return float(sigma * norm.ppf(p_lower))


class SmoothedClassifier:
    """g(x) = argmax_c P(f(x + N(0, sigma^2)) = c) over a base `nn.Module` returning logits for
    images in [0, 1]; `batch_size` noisy copies go through the model per forward pass."""

    def __init__(self, base: nn.Module, num_classes: int, sigma: float, batch_size: int = 100):
        if not sigma > 0:
            raise ClipxUsageError(f"smoothing: sigma must be > 0, got {sigma!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ClipxUsageError(
                f"smoothing: batch_size must be an integer >= 1, got {batch_size!r}"
            )
        self.base, self.num_classes = base, num_classes
        self.sigma, self.batch_size = float(sigma), batch_size

    @torch.no_grad()
    def counts(self, x: torch.Tensor, num: int, generator: torch.Generator) -> np.ndarray:
        """How often the base classifier returns each class over `num` noisy copies of x (C, H, W)."""
        out = np.zeros(self.num_classes, dtype=np.int64)
        remaining = num
        while remaining > 0:
            size = min(self.batch_size, remaining)
            batch = x.unsqueeze(0).expand(size, *x.shape)
            noise = torch.randn(batch.shape, generator=generator, device=x.device, dtype=x.dtype)
            pred = self.base(batch + self.sigma * noise).argmax(1)
            out += np.bincount(pred.cpu().numpy(), minlength=self.num_classes)
            remaining -= size
        return out

    def predict(self, x: torch.Tensor, n: int, alpha: float, seed: int = 0) -> int:
        """PREDICT: the top class if a two-sided binomial test separates it from the runner-up at
        level alpha, else ABSTAIN (wrong with probability at most alpha)."""
        counts = self.counts(x, n, _generator(x, seed))
        top2 = counts.argsort()[::-1][:2]
        n_a, n_b = int(counts[top2[0]]), int(counts[top2[1]])
        if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2[0])

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, seed: int = 0) -> Certificate:
        """CERTIFY: select with n0 draws, estimate with n independent draws, certify or abstain."""
        _check_draws(n0, n, alpha)
        generator = _generator(x, seed)
        candidate = int(self.counts(x, n0, generator).argmax())
        count = int(self.counts(x, n, generator)[candidate])
        p_lower = lower_confidence_bound(count, n, alpha)
        if p_lower < 0.5:
            return Certificate(ABSTAIN, 0.0, p_lower, count)
        return Certificate(candidate, certified_radius(self.sigma, p_lower), p_lower, count)

    def certify_all(
        self, images: torch.Tensor, n0: int, n: int, alpha: float, seed: int = 0
    ) -> list[Certificate]:
        """CERTIFY for each image of a batch; image i uses seed `seed + i` (order-independent)."""
        return [self.certify(x, n0, n, alpha, seed + i) for i, x in enumerate(images)]


def certified_accuracy(certificates: list[Certificate], labels: list[int], radius: float) -> float:
    """Percent of samples certified correct with a radius of at least `radius` (abstain = wrong)."""
    hits = [c.label == y and c.radius >= radius for c, y in zip(certificates, labels)]
    return 100.0 * sum(hits) / max(len(hits), 1)


def abstention_rate(certificates: list[Certificate]) -> float:
    """Percent of samples on which CERTIFY abstained."""
    return 100.0 * sum(c.label == ABSTAIN for c in certificates) / max(len(certificates), 1)


def _generator(x: torch.Tensor, seed: int) -> torch.Generator:
    return torch.Generator(device=x.device).manual_seed(int(seed))


def _check_draws(n0: int, n: int, alpha: float) -> None:
    for name, value in (("n0", n0), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ClipxUsageError(f"smoothing: {name} must be an integer >= 1, got {value!r}")
    if not 0 < alpha < 0.5:
        raise ClipxUsageError(f"smoothing: alpha must be in (0, 0.5), got {alpha!r}")
