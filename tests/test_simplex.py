"""AdvSimplex: triangle moments, the PGD trajectory, the closed-form expectation against exact
and Monte-Carlo references, differentiability, and the defense contract."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from clipx_simplex import (
    closed_form,
    get_divergence,
    monte_carlo,
    pgd_trajectory,
    sample_barycentric,
    triangle_mean,
    triangle_second_moment,
)
from helpers import tiny_clip
from torch import nn

from clip_robust_ext.errors import ClipxError, ClipxUsageError
from clip_robust_ext.models import ZeroShotClassifier
from clip_robust_ext.registry import get
from clip_robust_ext.training import Batch, TrainContext

CLASSES = [str(i) for i in range(10)]


def _zs(seed: int = 0) -> ZeroShotClassifier:
    return ZeroShotClassifier(tiny_clip(seed), CLASSES).eval()


def _double_scores(zs: ZeroShotClassifier):
    """The same zero-shot logits computed end to end in float64 (exactness tests)."""
    text = zs.class_matrix().double()
    zs.clip.double()

    def score(z):
        f = F.normalize(zs.clip.encode_image(zs.preprocess(z)), dim=-1)
        return zs.clip.logit_scale.exp() * f @ text.t()

    return score


# -- geometry ----------------------------------------------------------------------------------
def test_triangle_moments_match_uniform_sampling():
    g = torch.Generator().manual_seed(0)
    a, b = (
        torch.randn(4, generator=g, dtype=torch.float64),
        torch.randn(4, generator=g, dtype=torch.float64),
    )
    lam = sample_barycentric(200_000, generator=g, dtype=torch.float64)
    assert (lam >= 0).all() and torch.allclose(
        lam.sum(-1), torch.ones(len(lam), dtype=torch.float64)
    )
    u = lam[:, 1:2] * a + lam[:, 2:3] * b
    outer = u[:, :, None] * u[:, None, :]
    se_mean = u.std(0) / math.sqrt(len(u))
    se_outer = outer.std(0) / math.sqrt(len(u))
    assert ((u.mean(0) - triangle_mean(a, b)).abs() <= 5 * se_mean).all()
    assert ((outer.mean(0) - triangle_second_moment(a, b)).abs() <= 5 * se_outer + 1e-12).all()
    # closed form of the same moments in barycentric terms: E l_i^2 = 1/6, E l_1 l_2 = 1/12
    alt = (torch.outer(a, a) + torch.outer(b, b)) / 6 + (torch.outer(a, b) + torch.outer(b, a)) / 12
    assert torch.allclose(triangle_second_moment(a, b), alt)
    # uniform on the triangle: the barycentric density is flat (equal mass in the 4 sub-triangles
    # cut by the edge midpoints)
    corner = torch.stack([(lam[:, i] > 0.5) for i in range(3)], 1)
    frac = torch.cat([corner.float().mean(0), (~corner.any(1)).float().mean().view(1)])
    assert torch.allclose(frac, torch.full((4,), 0.25, dtype=frac.dtype), atol=0.005)


# -- trajectory --------------------------------------------------------------------------------
def test_trajectory_is_torchattacks_pgd_with_its_iterates():
    zs = _zs()
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([0, 4, 7])
    eps = 4 / 255
    torch.manual_seed(11)
    verts = pgd_trajectory(zs, x, y, eps, 1 / 255, 3)
    torch.manual_seed(11)
    ref = torchattacks.PGD(zs, eps=eps, alpha=1 / 255, steps=3, random_start=True)(x, y)
    assert verts.shape == (4, *x.shape) and not verts.requires_grad
    assert torch.equal(verts[-1], ref)
    assert ((verts - x).abs().amax() <= eps + 1e-6) and verts.min() >= 0 and verts.max() <= 1
    assert (verts[1:] - verts[:-1]).abs().amax() <= 1 / 255 + 1e-6  # one sign step apart
    assert zs.training is False and all(p.requires_grad for p in zs.parameters())  # state restored
    plain = pgd_trajectory(zs, x, y, eps, 1 / 255, 2, random_start=False)
    assert torch.equal(plain[0], x) and plain.shape[0] == 3


# -- closed form: exact on a quadratic loss ------------------------------------------------------
class _Linear(nn.Module):
    def __init__(self, d: int, c: int):
        super().__init__()
        self.fc = nn.Linear(d, c).double()

    def forward(self, z):
        return self.fc(z.flatten(1))


def _exact_quadratic_expectation(model: _Linear, x, deltas, target):
    """E over each triangle of ||W(x+u)+c-r||^2 from explicit J, H, E[u], E[uu^T] matrices."""
    w = model.fc.weight
    out = torch.empty(deltas.shape[0] - 1, x.shape[0], dtype=torch.float64)
    hess = 2 * w.t() @ w
    for n in range(x.shape[0]):
        e = model(x[n : n + 1])[0] - target[n]
        jac = 2 * w.t() @ e
        for i in range(deltas.shape[0] - 1):
            a, b = deltas[i, n].flatten(), deltas[i + 1, n].flatten()
            out[i, n] = (
                e @ e
                + jac @ triangle_mean(a, b)
                + 0.5 * torch.trace(hess @ triangle_second_moment(a, b))
            )
    return out


@pytest.mark.parametrize("derivatives", ["autograd", "finite-difference"])
def test_closed_form_is_exact_for_a_quadratic_loss(derivatives):
    torch.manual_seed(0)
    model = _Linear(3 * 4 * 4, 5)
    x = torch.rand(3, 3, 4, 4, dtype=torch.float64)
    deltas = (torch.rand(4, *x.shape, dtype=torch.float64) * 2 - 1) * 0.3
    div = get_divergence("l2-logits")
    target = div.target(model(x) + torch.randn(3, 5, dtype=torch.float64))  # D(x), J non-zero
    terms = closed_form(model, div, x, deltas, target, derivatives=derivatives, create_graph=False)
    exact = _exact_quadratic_expectation(model, x, deltas, target)
    assert terms.value.shape == (3, 3)
    torch.testing.assert_close(terms.value, exact, rtol=1e-10, atol=1e-12)
    # Monte Carlo agrees within its standard error, and the Taylor remainder is zero pointwise
    mc = monte_carlo(
        model, div, x, deltas, target, 4000, generator=torch.Generator().manual_seed(1)
    )
    z = (mc.mean - exact).abs() / mc.stderr
    assert z.max() < 4.5, z
    assert mc.remainder(terms).abs().max() < 1e-9 * exact.abs().max()


# -- closed form on a CLIP: within the Taylor error, shrinking with eps --------------------------
@pytest.mark.parametrize("reference", ["current", "other"])
def test_closed_form_matches_monte_carlo_on_clip_within_taylor_error(reference):
    zs = _zs(0)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([1, 6])
    div = get_divergence("kl")
    with torch.no_grad():
        ref_model = zs if reference == "current" else _zs(5)
        target = div.target(ref_model(x))
    rel, rel_fd = {}, {}
    for eps in (4 / 255, 1 / 255):
        torch.manual_seed(3)
        deltas = pgd_trajectory(zs, x, y, eps, eps, 3) - x
        terms = closed_form(zs, div, x, deltas, target, create_graph=False)
        fd = closed_form(
            zs, div, x, deltas, target, derivatives="finite-difference", create_graph=False
        )
        with torch.no_grad():
            mc = monte_carlo(
                zs, div, x, deltas, target, 64, generator=torch.Generator().manual_seed(0)
            )
        if reference == "current":  # KL minimum: D(x) = 0 and J = 0 at the clean point
            assert (
                terms.zeroth.abs().max() < 1e-6 and (terms.first.abs() < 1e-2 * terms.second).all()
            )
        # E[D] - closed form, sampled with low variance (the quadratic part is integrated exactly),
        # relative to the second-order term: O(eps^3) / O(eps^2) = O(eps)
        remainder = mc.remainder(terms).mean(1)
        rel[eps] = float((remainder.abs() / terms.second.abs()).max())
        rel_fd[eps] = float(((fd.value - terms.value).abs() / terms.second.abs()).max())
        # MC mean - closed form = remainder + sampling error of the quadratic model, and the
        # closed form is that model's exact expectation
        quad = terms.at(mc.lam)
        assert ((quad.mean(1) - terms.value).abs() <= 4 * quad.std(1) / 8).all()
        assert ((mc.mean - terms.value).abs() <= 4 * mc.stderr + remainder.abs()).all()
    assert rel[1 / 255] < 0.05, rel
    assert rel[1 / 255] < rel[4 / 255] / 2.5, rel
    # finite differences at x +- v add an O(|v|^4) error: O(eps^2) relative, larger but shrinking
    assert rel_fd[1 / 255] < 0.1 and rel_fd[1 / 255] < rel_fd[4 / 255] / 2.5, rel_fd


def test_batched_hessian_vector_products_match_one_at_a_time():
    zs = _zs()
    x = torch.rand(2, 3, 32, 32)
    div = get_divergence("kl")
    with torch.no_grad():
        target = div.target(_zs(5)(x))
    deltas = (torch.rand(3, *x.shape) * 2 - 1) * (2 / 255)
    terms = closed_form(zs, div, x, deltas, target, create_graph=False)
    n = 1  # the second sample: a wrong replica/sample layout would mix samples

    def f(z):
        return div(zs(z.unsqueeze(0)), target[n : n + 1]).sum()

    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        for k in (1, 2):
            _, hv = torch.autograd.functional.hvp(f, x[n], deltas[k, n])
            torch.testing.assert_close(
                terms.q_diag[k, n], (hv * deltas[k, n]).sum(), rtol=1e-4, atol=1e-9
            )
            q = (hv * deltas[k - 1, n]).sum()
            torch.testing.assert_close(terms.q_next[k - 1, n], q, rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize("derivatives", ["autograd", "finite-difference"])
def test_closed_form_is_differentiable_in_the_model_parameters(derivatives):
    """Its parameter gradient equals a central difference (float64): a training loss."""
    zs = _zs()
    score = _double_scores(zs)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    deltas = (torch.rand(3, *x.shape, dtype=torch.float64) * 2 - 1) * (4 / 255)
    div = get_divergence("kl")
    with torch.no_grad():
        target = div.target(0.8 * score(x))
    p = zs.clip.visual.conv1.weight
    terms = closed_form(score, div, x, deltas, target, derivatives=derivatives, create_graph=True)
    second = terms.second.mean()  # the Hessian term: only its graph tests create_graph
    (g,) = torch.autograd.grad(second, p)
    direction = torch.randn_like(p)
    h = 1e-4
    with torch.no_grad():
        p.add_(h * direction)
        up = closed_form(
            score, div, x, deltas, target, derivatives=derivatives, create_graph=False
        ).second.mean()
        p.sub_(2 * h * direction)
        down = closed_form(
            score, div, x, deltas, target, derivatives=derivatives, create_graph=False
        ).second.mean()
        p.add_(h * direction)
    numeric = (up - down) / (2 * h)
    assert abs(float(numeric)) > 0
    torch.testing.assert_close((g * direction).sum(), numeric, rtol=1e-4, atol=0)


# -- the defense ---------------------------------------------------------------------------------
def _ctx(zs, reference=None):
    return TrainContext(
        model=zs,
        reference=reference,
        classnames=CLASSES,
        templates=["{}"],
        device=torch.device("cpu"),
    )


def test_defense_is_registered_and_validates_options():
    build = get("defenses", "advsimplex").obj
    d = build()
    assert d.trainable == "visual" and d.needs_reference and d.steps == 3
    assert d.config()["eps"] == "1/255" and d.config()["divergence"] == "kl"
    assert not build(reference="current").needs_reference
    with pytest.raises(ClipxUsageError, match="did you mean 'weight'"):
        build(wieght=2.0)
    with pytest.raises(ClipxUsageError, match="divergence"):
        build(divergence="js")
    with pytest.raises(ClipxUsageError, match="steps"):
        build(steps=0)
    with pytest.raises(ClipxError, match="ctx.reference"):
        d.loss(Batch(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), ["a", "b"]), _ctx(_zs()))


def test_defense_loss_trains_the_vision_tower_and_reduces_to_tecoa_at_weight_zero():
    build = get("defenses", "advsimplex").obj
    torch.manual_seed(0)  # the batch and the perturbation below: independent of test order
    zs = _zs()
    zs.clip.requires_grad_(False)
    zs.clip.visual.requires_grad_(True)
    zs.train()
    ref = copy.deepcopy(zs).eval().requires_grad_(False)
    with torch.no_grad():  # move the model away from the reference: D(x), J become non-zero
        # (a random perturbation: scaling proj alone leaves the normalised features, so D(x), unchanged)
        zs.clip.visual.proj.add_(
            0.2 * zs.clip.visual.proj.std() * torch.randn_like(zs.clip.visual.proj)
        )
    batch = Batch(torch.rand(2, 3, 32, 32), torch.tensor([3, 9]), ["c"] * 2)
    torch.manual_seed(0)
    loss, metrics = build(eps="4/255", adv_weight=0.0).loss(batch, _ctx(zs, ref))
    assert {"ce", "simplex", "simplex_d0", "simplex_first", "simplex_second", "adv_acc"} <= set(
        metrics
    )
    # D(x) is a divergence between genuinely different models: clearly above float rounding
    assert metrics["simplex_d0"] > 1e-4 and abs(metrics["simplex_second"]) > 1e-6, metrics
    torch.testing.assert_close(loss.detach(), torch.tensor(metrics["simplex"]))
    loss.backward()  # the simplex term alone: gradients flow through the Hessian-vector products
    grads = [p.grad for p in zs.clip.visual.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert zs.clip.logit_scale.grad is None
    # weight 0 is TeCoA with PGD-3: CE on the final vertex
    torch.manual_seed(0)
    tecoa_loss, _ = build(eps="4/255", weight=0.0).loss(batch, _ctx(zs, None))
    torch.manual_seed(0)
    x_adv = torchattacks.PGD(zs, eps=4 / 255, alpha=1 / 255, steps=3)(batch.images, batch.labels)
    torch.testing.assert_close(tecoa_loss, F.cross_entropy(zs(x_adv), batch.labels))
    # the Monte-Carlo estimator is a drop-in alternative
    mc_loss, mc_metrics = build(eps="4/255", estimator="mc", mc_samples=2).loss(
        batch, _ctx(zs, ref)
    )
    assert torch.isfinite(mc_loss) and mc_loss.requires_grad and mc_metrics["simplex"] > 0


def test_composite_layer_norm_is_exact_to_third_order():
    """Training through an HVP differentiates layer norm three times; the fused kernel gets that
    wrong (pytorch/pytorch#175754), the decomposition used inside closed_form does not."""
    from clipx_simplex.expectation import composite_layer_norm

    torch.manual_seed(0)
    x, w = (
        torch.randn(3, 8, dtype=torch.float64),
        torch.randn(8, 8, dtype=torch.float64, requires_grad=True),
    )
    gain, bias = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    torch.testing.assert_close(
        composite_layer_norm(x, (8,), gain, bias), F.layer_norm(x, (8,), gain, bias)
    )
    v = torch.randn(3, 8, dtype=torch.float64)

    @torch.enable_grad()
    def vhv():
        xr = x.clone().requires_grad_(True)
        out = composite_layer_norm(xr @ w, (8,)).sin().sum()
        (g,) = torch.autograd.grad(out, xr, create_graph=True)
        (hv,) = torch.autograd.grad((g * v).sum(), xr, create_graph=True)
        return (hv * v).sum()

    (grad,) = torch.autograd.grad(vhv(), w)
    d, h = torch.randn_like(w), 1e-5
    with torch.no_grad():
        w.add_(h * d)
        up = vhv()
        w.sub_(2 * h * d)
        down = vhv()
    torch.testing.assert_close((grad * d).sum(), (up - down) / (2 * h), rtol=1e-6, atol=0)


@pytest.mark.parametrize("training", [True, False])
def test_composite_batch_norm_equals_batch_norm_and_has_third_derivatives(training):
    """ResNet image towers (procedural-small is one) have BatchNorm, whose kernel has no third
    derivative; the decomposition matches nn.BatchNorm2d's outputs and lets the closed form
    train through an HVP."""
    from clipx_simplex.expectation import exact_math

    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    twin = copy.deepcopy(bn)
    bn.train(training)
    twin.train(training)
    x = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    with exact_math(torch.device("cpu")):
        out = bn(x)
    before = bn.running_mean.clone(), bn.running_var.clone()
    torch.testing.assert_close(out, twin(x))
    # running stats are left to the ordinary passes: the closed form's x +- hv are not data
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])

    conv = nn.Conv2d(4, 4, 1).double()
    net = nn.Sequential(conv, bn).train(training)  # train mode: batch stats only in the output
    v = torch.randn_like(x)

    @torch.enable_grad()
    def vhv():
        xr = x.clone().requires_grad_(True)
        out = net(xr).sin().sum()
        (g,) = torch.autograd.grad(out, xr, create_graph=True)
        (hv,) = torch.autograd.grad((g * v).sum(), xr, create_graph=True)
        return (hv * v).sum()

    with exact_math(torch.device("cpu")):
        (grad,) = torch.autograd.grad(vhv(), conv.weight)  # third order: the kernel cannot
        d, h = torch.randn_like(conv.weight), 1e-5
        with torch.no_grad():
            base = conv.weight.clone()
            conv.weight.copy_(base + h * d)
            up = vhv()
            conv.weight.copy_(base - h * d)
            down = vhv()
            conv.weight.copy_(base)
    torch.testing.assert_close((grad * d).sum(), (up - down) / (2 * h), rtol=1e-5, atol=0)


def test_auto_derivatives_use_finite_differences_on_relu_towers_only():
    """ReLU towers make the J / H terms at one point discontinuous in the weights (training
    through autograd's closed form collapsed on the procedural ResNet; docs/methods.md), so "auto" picks
    finite differences there and keeps the exact autograd form on GELU ViTs."""
    from clipx_simplex.defense import resolve_derivatives

    from clip_robust_ext.models import load_clip

    torch.manual_seed(0)
    rn = ZeroShotClassifier(load_clip("clipx-tiny-rn"), CLASSES)
    vit = _zs()
    assert resolve_derivatives("auto", rn) == "finite-difference"
    assert resolve_derivatives("auto", vit) == "autograd"
    assert resolve_derivatives("autograd", rn) == "autograd"
    build = get("defenses", "advsimplex").obj
    assert build().config()["derivatives"] == "auto"
    # on the ResNet, "auto" computes exactly the finite-difference loss
    rn.train()
    ref = copy.deepcopy(rn).eval().requires_grad_(False)
    batch = Batch(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), ["c"] * 4)
    losses = {}
    for choice in ("auto", "finite-difference", "autograd"):
        model = copy.deepcopy(rn)  # a train-mode forward moves BatchNorm's running statistics
        torch.manual_seed(0)
        losses[choice], _ = build(eps="4/255", derivatives=choice).loss(batch, _ctx(model, ref))
    torch.testing.assert_close(losses["auto"], losses["finite-difference"])
    assert not torch.allclose(losses["auto"], losses["autograd"])
