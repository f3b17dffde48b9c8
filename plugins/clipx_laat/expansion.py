"""LAAT's anchor expansion (anchors/convert_anchor.py of LixiaoTHU/LAAT), as pure functions.

CLIP text embeddings of class prompts sit in a narrow cone (high mutual cosine), which makes a
cosine head with fixed anchors a weak, low-margin classifier. The expansion stretches the cone:

1. m = normalised mean of the TRAINING-class anchors (centre direction);
2. R = an orthogonal matrix with R m = e1 (here: a Householder reflection H = I - 2 v v^T / v^T v,
   v = m - e1, composed with the reflection that flips coordinate 2, so det R = +1 - a rotation.
   The reference builds R from Givens products; any orthogonal map sending m to e1 gives the same
   result, because the map below only depends on m - see `expand_direct`);
3. theta_c = angle(a_c, m); theta_max = max over the training anchors;
4. theta -> theta' = (pi / 2) theta / theta_max, the component orthogonal to m keeps its direction
   (scaled by sin theta' / sin theta), the m-component becomes cos theta'; rotate back.

`fit_expansion` returns the map parameters (fitted on training classes only); `apply_expansion`
applies them unchanged to any anchors, novel classes included. As in the reference, theta' is not
clamped: a novel anchor farther than 2 theta_max from m wraps past the antipode (theta' > pi), where
the map is no longer injective (`invert_expansion` is defined for theta' < pi only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clip_robust_ext.api import ClipxUsageError

_EPS = 1e-12


@dataclass(frozen=True)
class Expansion:
    """Parameters of a fitted expansion map (float64)."""

    centre: torch.Tensor  # (D,) unit vector m
    rotation: torch.Tensor  # (D, D) orthogonal R with R @ m = e1, det +1
    theta_max: float  # radians, max angle between m and a training anchor

    @property
    def dim(self) -> int:
        return int(self.centre.shape[0])

    def to_dict(self) -> dict[str, float | int]:
        return {"dim": self.dim, "theta_max_deg": math.degrees(self.theta_max)}


def _check_anchors(anchors: torch.Tensor, what: str = "anchors") -> torch.Tensor:
    if anchors.ndim != 2 or anchors.shape[0] < 1 or anchors.shape[1] < 2:
        raise ClipxUsageError(
            f"{what} must be a (C, D) matrix with D >= 2, got {tuple(anchors.shape)}"
        )
    if not torch.isfinite(anchors).all():
        raise ClipxUsageError(f"{what} contain non-finite values")
    return F.normalize(anchors.detach().double(), dim=-1)


def rotation_to_e1(m: torch.Tensor) -> torch.Tensor:
    """An orthogonal (D, D) matrix R with det +1 and R @ m = e1, for a unit vector m (float64)."""
    m = F.normalize(m.double(), dim=0)
    d = m.shape[0]
    eye = torch.eye(d, dtype=torch.float64, device=m.device)
    v = m.clone()
    v[0] -= 1.0  # v = m - e1
    vv = float(v @ v)
    if vv < _EPS:  # m is already e1
        return eye
    householder = eye - 2.0 * torch.outer(v, v) / vv  # reflection: m -> e1, det -1
    flip = eye.clone()
    flip[1, 1] = -1.0  # reflection fixing e1, det -1
    return flip @ householder


def fit_expansion(train_anchors: torch.Tensor) -> Expansion:
    """Fit (m, R, theta_max) on the training-class anchors (rows, any norm; renormalised)."""
    a = _check_anchors(train_anchors, "training anchors")
    if a.shape[0] < 2:
        raise ClipxUsageError("anchor expansion needs at least 2 training classes")
    mean = a.mean(0)
    if float(mean.norm()) < 1e-8:
        raise ClipxUsageError("training anchors average to zero; the centre direction is undefined")
    m = mean / mean.norm()
    theta_max = float(torch.arccos((a @ m).clamp(-1.0, 1.0)).max())
    if theta_max < 1e-8:
        raise ClipxUsageError("training anchors are identical; nothing to expand")
    return Expansion(centre=m, rotation=rotation_to_e1(m), theta_max=theta_max)


def _rescale_polar(z: torch.Tensor, factor: float) -> torch.Tensor:
    """In rotated coordinates (centre = e1): theta -> factor * theta, orthogonal direction kept."""
    theta = torch.arccos(z[:, 0].clamp(-1.0, 1.0))
    new_theta = factor * theta
    sin = torch.sin(theta)
    ortho = z[:, 1:]
    # at theta = 0 the orthogonal direction is undefined and the point stays at the centre
    scale = torch.where(
        sin > 1e-12, torch.sin(new_theta) / sin.clamp_min(1e-12), torch.zeros_like(sin)
    )
    out = torch.empty_like(z)
    out[:, 0] = torch.cos(new_theta)
    out[:, 1:] = ortho * scale.unsqueeze(1)
    return out


def apply_expansion(anchors: torch.Tensor, expansion: Expansion) -> torch.Tensor:
    """Expand anchors (training or novel classes) with a fitted map; unit rows, input dtype."""
    a = _check_anchors(anchors)
    if a.shape[1] != expansion.dim:
        raise ClipxUsageError(
            f"anchors have dim {a.shape[1]}, the expansion was fitted in dim {expansion.dim}"
        )
    rot = expansion.rotation.to(a.device)
    z = a @ rot.T  # rows R a
    out = _rescale_polar(z, (math.pi / 2) / expansion.theta_max) @ rot  # rows R^T z'
    out = F.normalize(out, dim=-1)
    return out.to(anchors.dtype if anchors.is_floating_point() else torch.float32)


def invert_expansion(expanded: torch.Tensor, expansion: Expansion) -> torch.Tensor:
    """The inverse map theta' -> theta' theta_max / (pi/2); exact for anchors with theta' < pi."""
    a = _check_anchors(expanded, "expanded anchors")
    rot = expansion.rotation.to(a.device)
    z = a @ rot.T
    out = F.normalize(_rescale_polar(z, expansion.theta_max / (math.pi / 2)) @ rot, dim=-1)
    return out.to(expanded.dtype)


def expand_direct(anchors: torch.Tensor, expansion: Expansion) -> torch.Tensor:
    """The same map without a rotation: a -> cos(theta') m + sin(theta') u, u = unit(a - <a,m> m).

    Used by the tests to show the result does not depend on which orthogonal R is chosen."""
    a = _check_anchors(anchors)
    m = expansion.centre.to(a.device)
    cos = (a @ m).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    new_theta = theta * (math.pi / 2) / expansion.theta_max
    ortho = a - cos.unsqueeze(1) * m
    norm = ortho.norm(dim=1, keepdim=True)
    u = torch.where(norm > 1e-12, ortho / norm.clamp_min(1e-12), torch.zeros_like(ortho))
    out = torch.cos(new_theta).unsqueeze(1) * m + torch.sin(new_theta).unsqueeze(1) * u
    return F.normalize(out, dim=-1).to(anchors.dtype)


def angles_to_centre(anchors: torch.Tensor, expansion: Expansion) -> torch.Tensor:
    """Angle (radians) between each anchor and the fitted centre m."""
    a = _check_anchors(anchors)
    return torch.arccos((a @ expansion.centre.to(a.device)).clamp(-1.0, 1.0))


def mean_pairwise_cosine(anchors: torch.Tensor) -> float:
    """Mean cosine over distinct pairs (off-diagonal). The reference script prints the mean over the
    full C x C matrix, diagonal included; that is (1 + (C - 1) * this) / C."""
    a = _check_anchors(anchors)
    c = a.shape[0]
    if c < 2:
        raise ClipxUsageError("mean pairwise cosine needs at least 2 anchors")
    sim = a @ a.T
    return float((sim.sum() - sim.diagonal().sum()) / (c * (c - 1)))
