"""APT's reference training attack and augmentation (TreeLLi/APT trainers/apt.py:421-430,
configs/trainers/APT/vit_b32_ep50.yaml), against the update written here from its description."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clip_robust_ext.errors import ClipxUsageError


class PeakAt(nn.Module):
    """Two logits [-3 sum (x - c)^2, 0] and label 1: CE rises as the pixels approach c, so its
    gradient's sign is sign(c - x) per pixel."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c

    def forward(self, x):
        z0 = -3 * ((x - self.c) ** 2).flatten(1).sum(1)
        return torch.stack([z0, torch.zeros_like(z0)], 1)


def _written_here(model, x, y, eps, alpha, steps):
    """The reference: delta ~ U[-eps, eps]; each step the gradient at clamp(x + delta, 0, 1);
    delta += alpha sign(grad), then clamped to [-eps, eps] only."""
    delta = torch.empty_like(x).uniform_(-eps, eps)
    for _ in range(steps):
        adv = (x + delta).clamp(0, 1).requires_grad_(True)
        g = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)[0]
        delta = (delta + alpha * g.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1)


def test_reference_pgd_keeps_delta_outside_the_box_where_torchattacks_projects():
    from clipx_prompt.reference import clamped_image_pgd
    from torchattacks import PGD

    x = torch.tensor([0.995, 0.5, 0.003]).view(1, 3, 1, 1).expand(4, 3, 1, 1).contiguous()
    y = torch.ones(4, dtype=torch.long)
    model = PeakAt(c=0.996).eval()
    eps, alpha, steps = 0.03, 0.01, 6
    torch.manual_seed(0)
    expected = _written_here(model, x, y, eps, alpha, steps)
    torch.manual_seed(0)
    got = clamped_image_pgd(model, x, y, eps, alpha, steps)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert (got - x).abs().max() <= eps + 1e-7 and 0 <= got.min() and got.max() <= 1
    torch.manual_seed(0)
    projected = PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
    assert not torch.equal(projected, got)  # near the top of the box the two updates part


def test_apt_trains_with_the_reference_update_and_augmentation(tmp_path):
    from test_prompt_tuning import _apt_run

    from clip_robust_ext.registry import get

    apt_cls = get("defenses", "apt").obj
    for bad in ({"pgd_update": "clamp"}, {"augment": "crop"}):
        with pytest.raises(ClipxUsageError, match="pgd_update|augment"):
            apt_cls(**bad)
    _, _, loaded, before = _apt_run(
        tmp_path, init="This is a photo of a", pgd_update="reference", augment="resized-crop-flip"
    )
    after = loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # towers frozen
    assert "prompt_context.shared" in after
    assert apt_cls(pgd_update="reference").config()["pgd_update"] == "reference"
    assert "pgd_update" not in apt_cls().config()  # earlier runs' configs are unchanged


def test_resized_crop_flip_crops_and_flips():
    from clipx_prompt.reference import resized_crop_flip

    x = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(64, 3, 16, 16).contiguous()
    torch.manual_seed(0)
    out = resized_crop_flip(x)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    slope = out[:, 0, 8, -1] - out[:, 0, 8, 0]  # the ramp runs right (kept) or left (flipped)
    assert (slope > 0).any() and (slope < 0).any()
    assert not torch.allclose(out[slope > 0], x[slope > 0])  # cropped and resized, not copied
