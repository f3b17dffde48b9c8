"""Triangles of a PGD trajectory and the moments of the uniform distribution on them.

A point of S = conv{x, x + a, x + b} is x + u with u = l1 a + l2 b, (l0, l1, l2) barycentric
coordinates. The uniform distribution on a non-degenerate triangle is l ~ Dirichlet(1, 1, 1);
the same pushforward is used for degenerate triangles (e.g. a = 0 without random start), so
every formula below holds for them as well. Dirichlet(1, 1, 1) moments: E[l_i] = 1/3,
E[l_i^2] = 1/6, E[l_i l_j] = 1/12, hence

    E[u]     = (a + b) / 3
    E[u u^T] = (a a^T + b b^T)/6 + (a b^T + b a^T)/12 = (a a^T + b b^T + (a+b)(a+b)^T) / 12.
"""

from __future__ import annotations

import torch


def triangle_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """E[u] for u uniform on the triangle with vertices 0, a, b (vectors, any shape)."""
    return (a + b) / 3


def triangle_second_moment(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """E[u u^T] (a (D, D) matrix) for 1-D vertices a, b. Only for tests and small D."""
    s = a + b
    return (torch.outer(a, a) + torch.outer(b, b) + torch.outer(s, s)) / 12


def sample_barycentric(
    n: int,
    shape: tuple[int, ...] = (),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(*shape, n, 3) Dirichlet(1, 1, 1) samples: normalised i.i.d. Exp(1) variables."""
    u = torch.rand((*shape, n, 3), generator=generator, device=device, dtype=torch.float64)
    e = -torch.log1p(-u)  # Exp(1); log1p(-u) is finite for u in [0, 1)
    return (e / e.sum(-1, keepdim=True)).to(dtype)


def simplex_pairs(n_vertices: int) -> list[tuple[int, int]]:
    """Indices (i, i+1) of the consecutive trajectory vertices spanning each triangle."""
    return [(i, i + 1) for i in range(n_vertices - 1)]
