"""TTC's tau-thresholded, weighted counterattack as a clipx test-time defense.

For an input x (clean or adversarial) and the classifier's un-normalised image embedding f:
  delta_0 ~ U[-eps, eps] (clipped so x + delta_0 stays in [0, 1]);
  tau = |f(x + delta_0) - f(x)| / |f(x)|  (how far random noise moves the embedding);
  delta_{k+1} = clip(delta_k + alpha * sign(grad |f(x + delta_k) - f(x)|^2)), k < steps;
  tau < tau_thres (falsely stable: adversarial): Delta = sum_k w_k delta_k, w = softmax(beta k);
  otherwise Delta = delta_0; the classifier then scores x + Delta.
Delta is a convex combination of points of the eps-box that keep x in [0, 1], so it stays in
both (`counterattack` is what the budget test checks).

Gradient for adaptive attacks (`attack_gradient`): "bpda" [default]: every step is the sign of a gradient and the gate is a
threshold, so Delta is piecewise constant in x; the exact derivative of x -> logits(x + Delta(x))
is the gradient at the counterattacked point (up to the [0, 1] clipping of delta at the box
edges, which is ignored: BPDA with the identity there). `logits` returns exactly that when the
images require grad. Randomness: while attacked (images require grad), delta_0 is drawn fresh
from torch's global generator (seeded by the engine per batch), so EOT attacks average over it;
when scoring, delta_0 comes from a generator seeded by (seed, the image's bytes), so the
defended pipeline is a deterministic function of each image (clean, non-adaptive and adaptive
numbers score the same function, independent of batch composition and resuming).
"unrolled": the inner PGD is differentiated (second order) with sign() replaced by the identity
in the backward pass (straight-through), so the attacker also sees how Delta moves with x.

Deviations from the authors' code (code/test_time_counterattack.py, read, not copied):
- fp32 throughout (they run under CUDA autocast);
- delta_0 from a per-image seeded generator when scoring (they draw from the global generator);
- tau is computed from the step-0 forward pass (their `compute_tau` runs a separate copy of
  the visual tower on the same x + delta_0; the values are identical, one pass is saved);
- only Linf (they also have an L2 branch, unused in their scripts);
- on fine-tuned checkpoints (TeCoA+TTC) they compute tau with a copy of the original CLIP's
  visual tower; clipx uses the model being defended (tau and counterattack from one model).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from clip_robust_ext.api import ClipxUsageError, TestTimeDefense, parse_eps

GRADIENTS = ("bpda", "unrolled")


class Counterattack(TestTimeDefense):
    name = "ttc"

    def __init__(
        self,
        eps: float | str = 4 / 255,
        alpha: float | str = 1 / 255,
        steps: int = 2,
        tau_thres: float = 0.2,
        beta: float = 2.0,
        seed: int = 0,
        attack_gradient: str = "bpda",
    ) -> None:
        """Defaults: the authors' TTC.sh (ttc_eps 4, stepsize 1, numsteps 2, tau 0.2, beta 2)."""
        eps = parse_eps(eps) if isinstance(eps, str) else eps
        alpha = parse_eps(alpha) if isinstance(alpha, str) else alpha
        for key, value in (("eps", eps), ("alpha", alpha), ("tau_thres", tau_thres)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ClipxUsageError(f"ttc: {key} must be a number >= 0, got {value!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ClipxUsageError(f"ttc: steps must be an integer >= 0, got {steps!r}")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)):
            raise ClipxUsageError(f"ttc: beta must be a number, got {beta!r}")
        self.eps, self.alpha, self.steps = float(eps), float(alpha), steps
        if attack_gradient not in GRADIENTS:
            raise ClipxUsageError(
                f"ttc: attack_gradient must be one of {GRADIENTS}, got {attack_gradient!r}"
            )
        self.tau_thres, self.beta, self.seed = float(tau_thres), float(beta), seed
        self.attack_gradient = attack_gradient

    # -- the defense ------------------------------------------------------------------------
    def logits(self, classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
        if images.requires_grad and self.attack_gradient == "unrolled":
            # double backward: the math attention kernel has one (the fused CPU kernel has not)
            with sdpa_kernel(SDPBackend.MATH):
                return classifier(self._unrolled(classifier, images))
        delta = self.counterattack(classifier, images) - images.detach()
        return classifier(images + delta)  # BPDA: d logits / d images at the counterattacked point

    def _mix(self, deltas: list[torch.Tensor], tau: torch.Tensor) -> torch.Tensor:
        """sum_k w_k delta_k: softmax(beta k) where tau < tau_thres, else delta_0 alone."""
        gated = tau < self.tau_thres  # falsely stable under noise: counterattack it
        k = torch.arange(self.steps + 1, device=tau.device, dtype=deltas[0].dtype)
        soft = torch.softmax(self.beta * k, 0).expand(len(tau), -1)
        hard = torch.zeros_like(soft)
        hard[:, 0] = 1.0
        weights = torch.where(gated[:, None], soft, hard)
        self.last_gated = gated.detach().cpu()
        return (weights[:, :, None, None, None] * torch.stack(deltas, 1)).sum(1)

    def _unrolled(self, classifier: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """x + Delta(x) with the inner steps differentiated (second order, through the anchor
        f(x) and the clipping): sign() passes its input's gradient straight through (STE), the
        tau gate and the random start are constants. A surrogate, not the exact gradient."""
        start = self._random_start(x.detach(), fresh=True)
        if self.eps == 0 or self.steps == 0:
            return x + start
        anchor = classifier.encode_image(x, normalize=False)
        deltas, delta, tau = [start], start.requires_grad_(True), None
        for _ in range(self.steps):
            feats = classifier.encode_image(x + delta, normalize=False)
            if tau is None:
                tau = ((feats - anchor).norm(dim=-1) / anchor.norm(dim=-1)).detach()
            loss = (feats - anchor).pow(2).sum()
            (grad,) = torch.autograd.grad(loss, delta, create_graph=True)
            sign = grad.sign().detach() + grad - grad.detach()
            step = (delta + self.alpha * sign).clamp(-self.eps, self.eps)
            delta = torch.max(torch.min(step, 1 - x), -x)
            deltas.append(delta)
        return x + self._mix(deltas, tau)

    def counterattack(self, classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """x + Delta (detached): the images the classifier sees."""
        x = images.detach()
        start = self._random_start(x, fresh=images.requires_grad)
        if self.eps == 0 or self.steps == 0:
            return x + start
        with torch.enable_grad():
            deltas, tau = self._steps(classifier, x, start)
        return x + self._mix(deltas, tau)

    def _steps(
        self, classifier: nn.Module, x: torch.Tensor, start: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """PGD away from the input's own (un-normalised) embedding; (deltas 0..steps, tau)."""
        with torch.no_grad():
            anchor = classifier.encode_image(x, normalize=False)
        deltas, delta, tau = [start], start, None
        for _ in range(self.steps):
            delta = delta.clone().requires_grad_(True)
            feats = classifier.encode_image(x + delta, normalize=False)
            if tau is None:  # the random start's move, relative to the embedding's norm
                tau = ((feats - anchor).norm(dim=-1) / anchor.norm(dim=-1)).detach()
            loss = (feats - anchor).pow(2).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            step = (delta.detach() + self.alpha * grad.sign()).clamp(-self.eps, self.eps)
            delta = torch.max(torch.min(step, 1 - x), -x)
            deltas.append(delta)
        return deltas, tau

    def _random_start(self, x: torch.Tensor, fresh: bool) -> torch.Tensor:
        """U[-eps, eps] noise clipped to keep x in [0, 1]; per-image seeded unless `fresh`."""
        if fresh:
            noise = torch.empty_like(x).uniform_(-self.eps, self.eps)
        else:
            flat = x.detach().cpu().contiguous()
            noise = torch.stack([self._noise_for(img) for img in flat]).to(x.device)
        return torch.max(torch.min(noise, 1 - x), -x)

    def _noise_for(self, image: torch.Tensor) -> torch.Tensor:
        digest = hashlib.sha256(str(self.seed).encode() + image.numpy().tobytes()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") % (2**63 - 1))
        u = torch.rand(image.shape, generator=gen, dtype=image.dtype)
        return (2 * u - 1) * self.eps

    def config(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "alpha": self.alpha,
            "steps": self.steps,
            "tau_thres": self.tau_thres,
            "beta": self.beta,
            "seed": self.seed,
            "attack_gradient": self.attack_gradient,
        }
