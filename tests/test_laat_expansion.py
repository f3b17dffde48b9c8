"""LAAT's anchor expansion: rotation, 90-degree stretch, transfer to novel classes, inverse."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clipx_laat.expansion import (
    angles_to_centre,
    apply_expansion,
    expand_direct,
    fit_expansion,
    invert_expansion,
    mean_pairwise_cosine,
    rotation_to_e1,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from clip_robust_ext.errors import ClipxUsageError


def cone(n: int, dim: int, spread: float, seed: int) -> torch.Tensor:
    """CLIP-like text anchors: a shared direction plus class-specific noise (high mutual cosine)."""
    g = torch.Generator().manual_seed(seed)
    base = F.normalize(torch.randn(dim, generator=g), dim=0)
    return F.normalize(base + spread * torch.randn(n, dim, generator=g) / math.sqrt(dim), dim=-1)


def givens_reference(train: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Independent oracle: the algorithm as described in METHODS.md section 3, with the rotation
    built as a product of Givens rotations (as the reference does) instead of a Householder map."""
    m = train.mean(0)
    m /= np.linalg.norm(m)
    d = m.shape[0]
    rot = np.eye(d)
    v = m.copy()
    for i in range(d - 1, 0, -1):  # zero v[i] into v[i-1], ending with all mass on coordinate 0
        r = math.hypot(v[i - 1], v[i])
        if r < 1e-15:
            continue
        c, s = v[i - 1] / r, v[i] / r
        g = np.eye(d)
        g[i - 1, i - 1], g[i - 1, i], g[i, i - 1], g[i, i] = c, s, -s, c
        v = g @ v
        rot = g @ rot
    assert np.allclose(rot @ m, np.eye(d)[0], atol=1e-12)
    theta_max = np.arccos(np.clip(train @ m, -1, 1)).max()
    z = anchors @ rot.T
    theta = np.arccos(np.clip(z[:, 0], -1, 1))
    new = theta * (math.pi / 2) / theta_max
    out = np.empty_like(z)
    out[:, 0] = np.cos(new)
    out[:, 1:] = z[:, 1:] * (np.sin(new) / np.sin(theta))[:, None]
    return out @ rot


@settings(max_examples=25, deadline=None)
@given(dim=st.integers(2, 40), seed=st.integers(0, 10_000))
def test_rotation_is_orthogonal_and_maps_centre_to_e1(dim, seed):
    m = F.normalize(
        torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=0
    )
    rot = rotation_to_e1(m)
    eye = torch.eye(dim, dtype=torch.float64)
    assert torch.allclose(rot @ rot.T, eye, atol=1e-12)
    assert torch.allclose(rot @ m, eye[0], atol=1e-12)
    assert abs(float(torch.linalg.det(rot)) - 1.0) < 1e-9  # a rotation, not a reflection


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_rotation_edge_cases_centre_on_axis(sign):
    m = torch.zeros(5, dtype=torch.float64)
    m[0] = sign
    rot = rotation_to_e1(m)
    assert torch.allclose(rot @ m, torch.eye(5, dtype=torch.float64)[0])
    assert torch.allclose(rot @ rot.T, torch.eye(5, dtype=torch.float64))


def test_training_anchors_stretched_to_90_degrees_and_spread():
    train = cone(12, 64, spread=1.0, seed=0)
    exp = fit_expansion(train)
    before = angles_to_centre(train, exp)
    assert float(before.max()) == pytest.approx(exp.theta_max, abs=1e-9)
    assert math.degrees(exp.theta_max) < 60  # a narrow cone to begin with
    out = apply_expansion(train, exp)
    after = angles_to_centre(out, exp)
    assert math.degrees(float(after.max())) == pytest.approx(90.0, abs=1e-6)
    # every polar angle scaled by the same factor; unit rows; dtype kept
    assert torch.allclose(after, before * (math.pi / 2) / exp.theta_max, atol=1e-6)
    assert torch.allclose(out.norm(dim=1), torch.ones(12), atol=1e-6) and out.dtype == train.dtype
    assert mean_pairwise_cosine(out) < mean_pairwise_cosine(train) - 0.3


def test_direction_orthogonal_to_centre_is_kept():
    train = cone(8, 32, spread=1.0, seed=1)
    exp = fit_expansion(train)
    out = apply_expansion(train, exp).double()
    m = exp.centre

    def ortho_dir(a):
        a = a.double()
        r = a - (a @ m).unsqueeze(1) * m
        return F.normalize(r, dim=1)

    assert torch.allclose(ortho_dir(train), ortho_dir(out), atol=1e-6)


def test_matches_givens_oracle_and_rotation_free_form():
    train = cone(10, 24, spread=1.2, seed=2)
    novel = cone(6, 24, spread=1.2, seed=2)[:6] * 0.9 + 0.1 * cone(6, 24, spread=3.0, seed=5)
    exp = fit_expansion(train)
    ours = apply_expansion(torch.cat([train, novel]).double(), exp).numpy()
    oracle = givens_reference(
        F.normalize(train.double(), dim=-1).numpy(),
        F.normalize(torch.cat([train, novel]).double(), dim=-1).numpy(),
    )
    assert np.allclose(ours, oracle, atol=1e-9)
    direct = expand_direct(torch.cat([train, novel]).double(), exp).numpy()
    assert np.allclose(ours, direct, atol=1e-9)


def test_map_is_fitted_on_training_classes_only_and_applied_unchanged_to_novel():
    train, novel = cone(10, 32, 1.0, seed=3), cone(5, 32, 1.0, seed=4)
    exp = fit_expansion(train)
    both = apply_expansion(torch.cat([train, novel]), exp)
    assert torch.allclose(both[:10], apply_expansion(train, exp), atol=1e-6)
    assert torch.allclose(both[10:], apply_expansion(novel, exp), atol=1e-6)
    # fitting on train + novel gives a different map: the novel classes did not leak into it
    assert not torch.allclose(
        apply_expansion(novel, fit_expansion(torch.cat([train, novel]))), both[10:], atol=1e-3
    )


def test_inverse_recovers_inputs_where_defined():
    train = cone(10, 32, spread=1.0, seed=6)
    exp = fit_expansion(train)
    probe = torch.cat([train, cone(7, 32, spread=1.5, seed=7)])
    expanded = apply_expansion(probe.double(), exp)
    theta = angles_to_centre(probe, exp)
    defined = theta * (math.pi / 2) / exp.theta_max < math.pi - 1e-6  # theta' < pi
    assert bool(defined[: len(train)].all()) and bool((~defined).any())
    back = invert_expansion(expanded, exp)
    assert torch.allclose(back[defined], F.normalize(probe.double(), dim=-1)[defined], atol=1e-8)
    # past 2 * theta_max the polar angle wraps beyond pi and the map is not injective
    far = (theta > 2 * exp.theta_max).nonzero()
    for i in far.flatten().tolist():
        assert not torch.allclose(back[i], F.normalize(probe.double(), dim=-1)[i], atol=1e-3)


def test_anchor_equal_to_centre_stays_at_centre():
    train = cone(6, 16, 1.0, seed=8)
    exp = fit_expansion(train)
    out = apply_expansion(exp.centre.unsqueeze(0).float(), exp)
    assert torch.allclose(out.double(), exp.centre.unsqueeze(0), atol=1e-6)


def test_bad_inputs_are_usage_errors():
    with pytest.raises(ClipxUsageError, match="at least 2"):
        fit_expansion(torch.randn(1, 8))
    with pytest.raises(ClipxUsageError, match=r"\(C, D\)"):
        fit_expansion(torch.randn(8))
    with pytest.raises(ClipxUsageError, match="identical"):
        fit_expansion(torch.ones(3, 8))
    exp = fit_expansion(torch.randn(4, 8))
    with pytest.raises(ClipxUsageError, match="dim"):
        apply_expansion(torch.randn(2, 9), exp)
    with pytest.raises(ClipxUsageError, match="non-finite"):
        apply_expansion(torch.full((2, 8), float("nan")), exp)


def test_mean_pairwise_cosine_excludes_the_diagonal():
    a = torch.eye(3)
    assert mean_pairwise_cosine(a) == pytest.approx(0.0)
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert mean_pairwise_cosine(b) == pytest.approx(1.0)


def test_real_clip_text_anchors_spread(clip_c10):
    """The shared small CLIP's CIFAR-10 anchors: mean pairwise cosine drops after expansion, the
    seen classes reach 90 degrees and the novel ones are spread too."""
    from clipx_laat.anchors import build_anchor_set, text_anchors

    seen = ["airplane", "automobile", "bird", "cat", "deer"]
    novel = ["dog", "frog", "horse", "ship", "truck"]
    raw_s, raw_n = text_anchors(clip_c10, seen), text_anchors(clip_c10, novel)
    raw = build_anchor_set(raw_s, raw_n, expand=False).stats()
    exp_set = build_anchor_set(raw_s, raw_n, expand=True)
    exp = exp_set.stats()
    assert raw["all_mean_pairwise_cos"] > 0.3
    assert exp["all_mean_pairwise_cos"] < raw["all_mean_pairwise_cos"] - 0.3
    assert exp["novel_mean_pairwise_cos"] < raw["novel_mean_pairwise_cos"]
    assert math.degrees(
        float(angles_to_centre(exp_set.seen, exp_set.expansion).max())
    ) == pytest.approx(90, abs=1e-4)
    # semantic neighbours survive the map: truck stays closest to automobile, dog to cat
    sim = exp_set.novel @ exp_set.seen.T
    assert seen[int(sim[novel.index("truck")].argmax())] == "automobile"
    assert seen[int(sim[novel.index("dog")].argmax())] == "cat"


@pytest.fixture(scope="module")
def clip_c10():
    from clip_robust_ext.data import assets_dir

    folder = assets_dir(required=False)
    if folder is None or not (folder / "small_clip" / "clipx-small-c10.pt").is_file():
        pytest.skip("CLIPX_ASSETS with small_clip/clipx-small-c10 is not available")
    from clip_robust_ext.registry import get

    return get("models", "clipx-small-c10").obj()
