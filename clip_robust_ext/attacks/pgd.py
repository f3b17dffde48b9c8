"""The registered "pgd": torchattacks.PGD, or the same iteration with early exit for evaluation.

An evaluation attack only has to find one adversarial example per sample. torchattacks.PGD runs
all k steps on every sample and returns the final iterate; with `early_exit=True` a sample leaves
the attack at the first iterate that is misclassified (that iterate is returned for it) and the
batch is compacted, so later steps cost only the samples still correctly classified. The
iteration is torchattacks.PGD's (uniform random start in the ball clipped to [0, 1], step
`alpha * sign(grad CE)`, projection onto the ball and [0, 1], the same random draws), so a sample
that survives follows the same trajectory: robust accuracy under early exit ("no misclassified
iterate among the k + 1") is never above the final-iterate number, and on undefended models it
costs a fraction of the steps (benchmarks `early_exit`). The misclassification test reuses the
logits of the forward pass the step computes anyway: no extra passes.

Training uses the full-length attack (the factory's default); the evaluation engine passes the
protocol's `early_exit` (docs/evaluation.md, "Early exit and cascade").

`eot_samples = n > 1` (Expectation over Transformation, for randomized pipelines) averages the
gradient of n forward passes per step: torchattacks.EOTPGD without early exit; with early exit a
sample leaves only when every one of the step's n draws misclassifies it (the engine turns early
exit off against pipelines it finds non-deterministic anyway; docs/randomized.md).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ClipxUsageError
from ..params import checked
from ..utils.eps import parse_eps
from .base import attack_mode
from .torchattacks_adapter import TorchattacksAttack


class EarlyExitPGD:
    """Linf PGD (torchattacks.PGD's arithmetic and random draws) where each sample stops at its
    first misclassified iterate. `passes` counts per-sample forward+backward passes since the
    last call (k x batch for the full-length attack)."""

    norm = "Linf"
    backend = "clipx EarlyExitPGD (torchattacks.PGD iteration, early exit)"

    def __init__(
        self,
        model: nn.Module,
        eps: float | str = 8 / 255,
        alpha: float | str = 2 / 255,
        steps: int = 10,
        random_start: bool = True,
        early_exit: bool = True,
        eot_samples: int = 1,
    ):
        self.model = model
        self.eot_samples = _eot(eot_samples)
        self.eps = parse_eps(eps, name="eps")
        self.alpha = parse_eps(alpha, name="alpha")
        self.steps, self.random_start, self.early_exit = int(steps), bool(random_start), early_exit
        self.passes = 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with attack_mode(self.model), torch.autocast(images.device.type, enabled=False):
            return self._run(images.detach().float(), labels.detach())

    def _run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = len(x)
        adv = x.clone()
        if self.random_start:  # the same draw as torchattacks.PGD
            adv = (adv + torch.empty_like(adv).uniform_(-self.eps, self.eps)).clamp(0, 1)
        out = adv.clone()  # per sample: its first misclassified iterate, else the last one
        idx = torch.arange(n, device=x.device)  # original positions of the samples still in
        xs, ys = x, y
        self.passes = 0
        for _ in range(self.steps):
            adv = adv.detach().requires_grad_(True)
            grad, wrong = self._eot_grad(adv, ys, n)
            step = adv.detach() + self.alpha * grad.sign()
            step = (xs + (step - xs).clamp(-self.eps, self.eps)).clamp(0, 1)
            if self.early_exit:
                if bool(wrong.any()):
                    out[idx[wrong]] = adv.detach()[wrong]
                    keep = ~wrong
                    idx, xs, ys, step = idx[keep], xs[keep], ys[keep], step[keep]
                    if not len(idx):
                        return out
            adv = step
        out[idx] = adv.detach()
        return out

    def _eot_grad(
        self, adv: torch.Tensor, ys: torch.Tensor, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The input gradient summed over `eot_samples` forward passes (its sign is the mean's),
        and which samples every pass misclassified. The logits are those of the passes the step
        computes anyway: no extra forward passes."""
        grad = torch.zeros_like(adv)
        wrong = torch.ones(len(adv), dtype=torch.bool, device=adv.device)
        for _ in range(self.eot_samples):
            logits = self.model(adv)
            self.passes += len(adv)
            # CE summed and divided by the full batch size: torchattacks' mean when nobody has
            # left, and per-sample gradients that do not depend on who has left
            loss = F.cross_entropy(logits, ys, reduction="sum") / n
            grad += torch.autograd.grad(loss, adv)[0]
            wrong &= logits.detach().argmax(1) != ys
        return grad, wrong

    def __repr__(self) -> str:
        return (
            f"EarlyExitPGD(eps={self.eps}, alpha={self.alpha}, steps={self.steps}, "
            f"random_start={self.random_start}, early_exit={self.early_exit}, "
            f"eot_samples={self.eot_samples})"
        )


def _eot(eot_samples: int) -> int:
    if isinstance(eot_samples, bool) or not isinstance(eot_samples, int) or eot_samples < 1:
        raise ClipxUsageError(f"pgd: eot_samples must be an integer >= 1, got {eot_samples!r}")
    return eot_samples


def _pgd(
    model: nn.Module,
    eps: float | str = 8 / 255,
    alpha: float | str = 2 / 255,
    steps: int = 10,
    random_start: bool = True,
    early_exit: bool = False,
    eot_samples: int = 1,
) -> EarlyExitPGD | TorchattacksAttack:
    """torchattacks.PGD (final iterate), torchattacks.EOTPGD with `eot_samples > 1`, or
    EarlyExitPGD with `early_exit` (evaluation)."""
    if early_exit:
        return EarlyExitPGD(model, eps, alpha, steps, random_start, eot_samples=eot_samples)
    import torchattacks

    budget = {"eps": eps, "alpha": alpha, "steps": steps, "random_start": random_start}
    if _eot(eot_samples) > 1:
        return TorchattacksAttack(torchattacks.EOTPGD, model, eot_iter=eot_samples, **budget)
    return TorchattacksAttack(torchattacks.PGD, model, **budget)


# the registry factory: keyword names checked on every call, signature read by recipes
build_pgd = checked(_pgd, "attack 'pgd'", signature=inspect.signature(_pgd))
