"""E_{u ~ Uniform(S)} D(x + u) over the trajectory triangles: closed form and Monte Carlo.

Closed form (derived here; the paper's text is not available): expand D at the clean sample,
    D(x + u) ~= D(x) + J^T u + 1/2 u^T H u,      J, H: input gradient / Hessian of D at x,
and take the expectation with the moments of geometry.py. For the triangle (0, a, b):
    E[D] ~= D(x) + J^T (a + b)/3 + 1/24 [a^T H a + b^T H b + (a+b)^T H (a+b)]
          = D(x) + J^T (a + b)/3 + 1/12 [q(a, a) + q(b, b) + q(a, b)],   q(v, w) = v^T H w.
Consecutive triangles share vertices, so q(delta_k, delta_k) and q(delta_k, delta_k+1) for the
T+1 vertices of a PGD-T trajectory need only T+1 Hessian-vector products (not 3T).

With D = KL(p_ref(x) || p_theta(x+u)) and the *current* model as reference, D(x) = 0 and J = 0
(a KL minimum), so the second-order term is all there is; with the frozen reference both are
non-zero once the model has moved away from it.

derivatives="autograd" (default): one batched double backward. x is replicated once per vertex,
so a single gradient call (create_graph) gives J and a single second call gives H delta_k for
every vertex at once; the Hessian is never formed. With create_graph=True the result is
differentiable w.r.t. the model parameters (a training loss).
derivatives="finite-difference": forward passes only, at x +- h v for v in {delta_k,
delta_k + delta_k+1}; v^T H v = [D(x+hv) + D(x-hv) - 2 D(x)] / h^2 and J^T v =
[D(x+hv) - D(x-hv)] / 2h, exact for a quadratic D, O(h^2 |v|^4) error otherwise; the training
backward is then an ordinary (first-order) one.

Both run in fp32 with autocast off and the math attention kernel (the fused CPU/GPU attention
kernels have no double backward), and with layer norm decomposed into primitive ops: training
through a Hessian-vector product is a third derivative, and PyTorch's fused layer_norm gives
silently wrong third derivatives w.r.t. its input (its double backward treats the saved
mean/invstd as constants; pytorch/pytorch#175754, unfixed in torch 2.14). The decomposition is
exact to all orders; test_simplex.py checks the parameter gradient against finite differences."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from clip_robust_ext.api import ClipxUsageError

from .divergence import Divergence, ScoreFn, at_least_fp32
from .geometry import sample_barycentric

DERIVATIVES = ("autograd", "finite-difference")


def composite_layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """F.layer_norm from primitive ops: differentiable to any order."""
    dims = tuple(range(-len(normalized_shape), 0))
    centered = input - input.mean(dims, keepdim=True)
    out = centered * torch.rsqrt((centered * centered).mean(dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    return out + bias if bias is not None else out


def composite_batch_norm(
    input,
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
):
    """F.batch_norm from primitive ops (batch statistics when training, running ones otherwise):
    PyTorch's batch_norm has no third derivative, so ResNet image towers (open_clip's
    ModifiedResNet) need this for training through an HVP. Running stats are NOT updated here:
    the closed form's extra passes at x +- h v are not data, and the ordinary forward passes of
    the step (whose graphs hold the buffers) update them."""
    dims = [0, *range(2, input.dim())]
    shape = [1, -1] + [1] * (input.dim() - 2)
    if training or running_mean is None:
        mean = input.mean(dims)
        var = input.var(dims, unbiased=False)
    else:
        mean, var = running_mean, running_var
    out = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    if weight is not None:
        out = out * weight.view(shape)
    return out + bias.view(shape) if bias is not None else out


class _CompositeLayerNorm(TorchFunctionMode):
    """Routes every F.layer_norm (nn.LayerNorm and open_clip's LayerNorm call it) and
    F.batch_norm to the composite versions while active; other functions are untouched."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.layer_norm:
            return composite_layer_norm(*args, **kwargs)
        if func is F.batch_norm:
            return composite_batch_norm(*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def exact_math(device: torch.device) -> Iterator[None]:
    """fp32, no autocast, attention and layer norm differentiable to third order."""
    with (
        torch.autocast(device.type, enabled=False),
        sdpa_kernel([SDPBackend.MATH]),
        _CompositeLayerNorm(),
    ):
        yield


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner products over all but the first dimension."""
    return (a * b).flatten(1).sum(1)


def _replicate(t: torch.Tensor, k: int) -> torch.Tensor:
    return t.unsqueeze(0).expand(k, *t.shape).reshape(k * t.shape[0], *t.shape[1:])


@dataclass
class SimplexTerms:
    """The second-order model of D on every triangle of one trajectory (per sample).

    zeroth (N,) = D(x); lin (K, N) = J^T delta_k; q_diag (K, N) = delta_k^T H delta_k;
    q_next (K-1, N) = delta_k^T H delta_k+1. Triangle i is (x, x+delta_i, x+delta_i+1)."""

    zeroth: torch.Tensor
    lin: torch.Tensor
    q_diag: torch.Tensor
    q_next: torch.Tensor

    @property
    def first(self) -> torch.Tensor:
        """(T, N) J^T E[u] per triangle."""
        return (self.lin[:-1] + self.lin[1:]) / 3

    @property
    def second(self) -> torch.Tensor:
        """(T, N) 1/2 tr(H E[u u^T]) per triangle."""
        return (self.q_diag[:-1] + self.q_diag[1:] + self.q_next) / 12

    @property
    def value(self) -> torch.Tensor:
        """(T, N) closed-form E_S[D] per triangle and sample."""
        return self.zeroth.unsqueeze(0) + self.first + self.second

    def at(self, lam: torch.Tensor) -> torch.Tensor:
        """The quadratic model at barycentric points lam (T, S, N, 3) -> (T, S, N)."""
        l1, l2 = lam[..., 1], lam[..., 2]
        lin = l1 * self.lin[:-1, None] + l2 * self.lin[1:, None]
        quad = (
            l1**2 * self.q_diag[:-1, None]
            + l2**2 * self.q_diag[1:, None]
            + 2 * l1 * l2 * self.q_next[:, None]
        )
        return self.zeroth + lin + quad / 2


def closed_form(
    score_fn: ScoreFn,
    divergence: Divergence,
    x: torch.Tensor,
    deltas: torch.Tensor,
    target: torch.Tensor,
    derivatives: str = "autograd",
    create_graph: bool = True,
    fd_step: float = 1.0,
) -> SimplexTerms:
    """Second-order terms at x for trajectory offsets deltas (K, N, ...) (delta_k = vertex_k - x).

    target: divergence.target(reference scores at x), (N, ...). create_graph=True keeps the
    graph to the model parameters (training); False returns detached values."""
    if deltas.ndim != x.ndim + 1 or deltas.shape[1:] != x.shape:
        raise ClipxUsageError(
            f"deltas must be (K, *x.shape), got {tuple(deltas.shape)} for x {tuple(x.shape)}"
        )
    if deltas.shape[0] < 2:
        raise ClipxUsageError("a trajectory needs at least two vertices (one triangle)")
    if derivatives not in DERIVATIVES:
        raise ClipxUsageError(f"derivatives must be one of {DERIVATIVES}, got {derivatives!r}")
    x = at_least_fp32(x.detach())
    deltas = deltas.detach().to(x.dtype)
    target = target.detach()
    with exact_math(x.device), torch.enable_grad():
        if derivatives == "autograd":
            terms = _autograd_terms(score_fn, divergence, x, deltas, target, create_graph)
        else:
            if not fd_step > 0:
                raise ClipxUsageError(f"fd_step must be positive, got {fd_step!r}")
            with contextlib.nullcontext() if create_graph else torch.no_grad():
                terms = _fd_terms(score_fn, divergence, x, deltas, target, float(fd_step))
    if not create_graph:
        terms = SimplexTerms(
            *(t.detach() for t in (terms.zeroth, terms.lin, terms.q_diag, terms.q_next))
        )
    return terms


def _autograd_terms(score_fn, divergence, x, deltas, target, create_graph) -> SimplexTerms:
    k, n = deltas.shape[:2]
    xr = _replicate(x, k).clone().requires_grad_(True)  # copy j carries direction delta_j
    v = deltas.reshape(k * n, *x.shape[1:])
    d = divergence(score_fn(xr), _replicate(target, k))
    (g,) = torch.autograd.grad(d.sum(), xr, create_graph=True)
    gv = _dot(g, v)  # J^T delta_j (copies are independent, so g's copies are all J)
    (hv,) = torch.autograd.grad(gv.sum(), xr, create_graph=create_graph)  # H delta_j per copy
    hv = hv.view(k, n, -1)
    vf = deltas.reshape(k, n, -1)
    q_diag = (vf * hv).sum(-1)
    q_next = ((vf[:-1] * hv[1:]).sum(-1) + (vf[1:] * hv[:-1]).sum(-1)) / 2  # H symmetric
    return SimplexTerms(d.view(k, n)[0], gv.view(k, n), q_diag, q_next)


def _fd_terms(score_fn, divergence, x, deltas, target, h) -> SimplexTerms:
    k, n = deltas.shape[:2]
    dirs = torch.cat([deltas, deltas[:-1] + deltas[1:]])  # (2K-1, N, ...)
    m = dirs.shape[0]
    points = torch.cat([x.unsqueeze(0), x + h * dirs, x - h * dirs]).reshape(-1, *x.shape[1:])
    d = divergence(score_fn(points), _replicate(target, 2 * m + 1)).view(2 * m + 1, n)
    d0, plus, minus = d[0], d[1 : m + 1], d[m + 1 :]
    lin = (plus - minus) / (2 * h)
    quad = (plus + minus - 2 * d0) / h**2  # v^T H v for every direction
    q_diag, q_sum = quad[:k], quad[k:]
    q_next = (q_sum - q_diag[:-1] - q_diag[1:]) / 2
    return SimplexTerms(d0, lin[:k], q_diag, q_next)


@dataclass
class MonteCarlo:
    """values (T, S, N): D at S uniform points of each triangle; lam (T, S, N, 3) their
    barycentric coordinates (vertex order x, x+delta_i, x+delta_i+1)."""

    values: torch.Tensor
    lam: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.values.mean(1)

    @property
    def stderr(self) -> torch.Tensor:
        s = self.values.shape[1]
        return (
            self.values.std(1) / math.sqrt(s) if s > 1 else torch.full_like(self.mean, float("inf"))
        )

    def remainder(self, terms: SimplexTerms) -> torch.Tensor:
        """(T, S, N) D - quadratic model at the same points: the Taylor remainder samples.

        Its mean is an estimate of E[D] - closed form with far less variance than
        mean - closed form (the quadratic part is integrated exactly)."""
        return self.values - terms.at(self.lam).to(self.values)


def monte_carlo(
    score_fn: ScoreFn,
    divergence: Divergence,
    x: torch.Tensor,
    deltas: torch.Tensor,
    target: torch.Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
    chunk: int = 512,
    lam: torch.Tensor | None = None,
) -> MonteCarlo:
    """D at n_samples uniform points (Dirichlet(1,1,1)) of every triangle, per sample.

    Differentiable w.r.t. the model parameters when grad is enabled (the "mc" estimator).
    Points are convex combinations of [0, 1] images inside the eps-ball, so they are too."""
    if n_samples < 1:
        raise ClipxUsageError(f"n_samples must be positive, got {n_samples!r}")
    k, n = deltas.shape[:2]
    t = k - 1
    x = at_least_fp32(x.detach())
    deltas = deltas.detach().to(x.dtype)
    target = target.detach()
    if lam is None:
        lam = sample_barycentric(
            n, (t, n_samples), generator=generator, device=x.device, dtype=x.dtype
        )
    if lam.shape != (t, n_samples, n, 3):
        raise ClipxUsageError(
            f"lam must be (T, S, N, 3) = {(t, n_samples, n, 3)}, got {tuple(lam.shape)}"
        )
    view = (n_samples, n) + (1,) * (x.ndim - 1)
    rows = []
    with exact_math(x.device):
        for i in range(t):
            z = (
                x
                + lam[i, ..., 1].reshape(view) * deltas[i]
                + lam[i, ..., 2].reshape(view) * deltas[i + 1]
            )
            z = z.reshape(n_samples * n, *x.shape[1:])
            tgt = _replicate(target, n_samples)
            vals = [
                divergence(score_fn(z[j : j + chunk]), tgt[j : j + chunk])
                for j in range(0, len(z), chunk)
            ]
            rows.append(torch.cat(vals).view(n_samples, n))
    return MonteCarlo(torch.stack(rows), lam)
