"""APGD as FARE's training code runs it (RobustVLM train/apgd_train.py `apgd_train`, called from
adversarial_training_clip.py with `--attack apgd`), next to the paper's APGD in fare_attack.py.

What this reproduces, each a difference from Croce & Hein's description (docs/FIDELITY.md#fare):
* no random start: the first gradient is taken at the clean image;
* integer checkpoints: the first window is max(int(0.22 n), 1) iterations, each next one is
  max(int(0.03 n), 1) shorter, never below max(int(0.06 n), 1) (at n = 10: after iterations
  2, 3, ..., 10); at a check a sample halves its step and restarts from its best point (with its
  gradient there, not re-evaluated) if its loss rose in at most 75% of the window's iterations, or
  if it was not halved at the last check and its best loss has not improved since. The window's
  first comparison reads the iteration before it from a zero-initialised buffer, so at the first
  check the loss of iteration 1 is compared with 0 (the buffer's last row);
* the point returned is the last iterate at which the sample's score vector's argmax differs
  from its label (FARE passes the normalised image embedding and the class label, so in practice
  the last iterate), or the clean image if there was none; not the best-loss point."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .fare_attack import EmbeddingPGD, embedding_l2

# per-sample loss (N,) and per-sample scores (N, C) whose argmax is compared with the labels
LossAndScores = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def reference_windows(steps: int) -> list[int]:
    """The iterations after which apgd_train checks its step size (1-based)."""
    window = max(int(0.22 * steps), 1)
    shortest, shrink = max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    out, at = [], window
    while at <= steps:
        out.append(at)
        window = max(window - shrink, shortest)
        at += window
    return out


def _evaluate(fn: LossAndScores, z: torch.Tensor, with_grad: bool):
    z = z.clone().requires_grad_(with_grad)
    loss, scores = fn(z)
    grad = torch.autograd.grad(loss.sum(), z)[0].detach() if with_grad else None
    return loss.detach(), scores.detach(), grad


def apgd_reference(
    fn: LossAndScores, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int
) -> torch.Tensor:
    """L_inf APGD maximising fn's loss as apgd_train does (module docstring)."""
    x = images.detach().clamp(0, 1)
    n = x.shape[0]
    view = (n,) + (1,) * (x.dim() - 1)

    def project(z: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.minimum(torch.maximum(z, x - eps), x + eps), 0.0, 1.0)

    adv, prev, returned = x.clone(), x.clone(), x.clone()
    loss, _, grad = _evaluate(fn, adv, with_grad=True)
    best, best_grad, best_loss = adv.clone(), grad.clone(), loss.clone()
    step = torch.full(view, 2.0 * eps, dtype=x.dtype, device=x.device)
    history = torch.zeros(steps, n, dtype=loss.dtype, device=x.device)
    halved_last = torch.ones(n, dtype=torch.bool, device=x.device)
    best_at_check = best_loss.clone()
    checks = reference_windows(steps)
    window = checks[0] if checks else 0
    for i in range(steps):
        momentum = adv - prev
        prev = adv.clone()
        a = 0.75 if i > 0 else 1.0
        z = project(adv + step * grad.sign())
        adv = project(adv + a * (z - adv) + (1 - a) * momentum)
        loss, scores, new_grad = _evaluate(fn, adv, with_grad=i < steps - 1)
        grad = new_grad if new_grad is not None else grad
        wrong = scores.argmax(dim=1) != labels
        returned[wrong] = adv[wrong]
        history[i] = loss
        up = loss > best_loss
        best[up], best_grad[up], best_loss[up] = adv[up], grad[up], loss[up]
        if i + 1 not in checks:
            continue
        rises = sum((history[i - c] > history[(i - c - 1) % steps]).float() for c in range(window))
        halve = (rises <= 0.75 * window) | (~halved_last & (best_at_check >= best_loss))
        halved_last, best_at_check = halve.clone(), best_loss.clone()
        step[halve] /= 2.0
        adv[halve], grad[halve] = best[halve], best_grad[halve]
        later = [c for c in checks if c > i + 1]
        window = later[0] - (i + 1) if later else window
    return returned.detach()


class EmbeddingAPGDReference(EmbeddingPGD):
    """FARE's inner maximisation as its training code runs `--attack apgd`: squared L2 distance
    between the *normalised* embedding of the perturbed image (apgd_train hard-codes
    `output_normalize=True`) and the *un-normalised* clean embedding of the frozen model
    (the training default), with apgd_reference's schedule and returned point.
    Call as attack(images, target_embeddings, labels)."""

    def __init__(self, model, eps: float = 4 / 255, steps: int = 10):
        super().__init__(model, eps=eps, alpha=0.0, steps=steps, random_start=False)
        self.attack = "EmbeddingAPGDReference"

    def forward(
        self, images: torch.Tensor, target: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        target = target.clone().detach().to(self.device)

        def fn(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            normed = self.model.encode_image(z, normalize=True)
            return embedding_l2(normed, target), normed

        return apgd_reference(fn, images, labels.to(self.device), self.eps, self.steps)
