"""LAAT losses, the anchor-head model and the paper-mode training loop (small and fast)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from clipx_laat.anchors import build_anchor_set
from clipx_laat.backbones import AnchorNet, build_backbone
from clipx_laat.losses import ace_loss, cosine_logits, laat_loss, smoothing_loss
from clipx_laat.paper import PaperConfig, SplitData, augment_batch, evaluate_head, train_backbone

from clip_robust_ext.attacks import build_attack, verify_adversarial
from clip_robust_ext.data import ProceduralShapes
from clip_robust_ext.errors import ClipxUsageError


def test_ace_is_cross_entropy_over_cosine_logits_with_temperature():
    g = torch.Generator().manual_seed(0)
    feats, anchors = torch.randn(6, 16, generator=g), torch.randn(4, 16, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    cos = F.normalize(feats, dim=-1) @ F.normalize(anchors, dim=-1).T
    assert ace_loss(feats, anchors, y).item() == pytest.approx(
        F.cross_entropy(cos, y).item(), rel=1e-6
    )
    assert ace_loss(feats, anchors, y, tau=0.07).item() == pytest.approx(
        F.cross_entropy(cos / 0.07, y).item(), rel=1e-6
    )
    # feature scale does not matter (cosine), logits bounded by 1 / tau
    assert ace_loss(5 * feats, anchors, y).item() == pytest.approx(
        ace_loss(feats, anchors, y).item(), rel=1e-6
    )
    assert cosine_logits(feats, anchors, 0.5).abs().max() <= 2.0 + 1e-6
    with pytest.raises(ClipxUsageError, match="tau"):
        ace_loss(feats, anchors, y, tau=0)


def test_smoothing_is_negative_cosine_and_flows_into_both_branches():
    a = torch.randn(5, 8, requires_grad=True)
    b = (a.detach() * 3).requires_grad_(True)
    assert smoothing_loss(a, b).item() == pytest.approx(-1.0, abs=1e-6)
    assert smoothing_loss(a, -a).item() == pytest.approx(1.0, abs=1e-6)
    c = torch.randn(5, 8, requires_grad=True)
    smoothing_loss(a, c).backward()
    assert a.grad.abs().sum() > 0 and c.grad.abs().sum() > 0


def test_laat_loss_combines_ace_and_beta_smoothing():
    g = torch.Generator().manual_seed(1)
    clean, adv, anchors = (
        torch.randn(8, 12, generator=g),
        torch.randn(8, 12, generator=g),
        torch.randn(3, 12, generator=g),
    )
    y = torch.randint(0, 3, (8,), generator=g)
    loss, m = laat_loss(clean, adv, anchors, y, tau=1.0, beta=0.5)
    expect = ace_loss(adv, anchors, y) + 0.5 * smoothing_loss(clean, adv)
    assert loss.item() == pytest.approx(expect.item(), rel=1e-6)
    assert set(m) == {"ace", "smooth", "adv_acc"}
    loss0, m0 = laat_loss(clean, adv, anchors, y, beta=0.0)
    assert loss0.item() == pytest.approx(ace_loss(adv, anchors, y).item()) and "smooth" not in m0


def test_anchor_net_head_is_frozen_swappable_and_attackable():
    torch.manual_seed(0)
    anchors = torch.randn(5, 24)
    net = AnchorNet(build_backbone("conv4", 8), anchors, tau=1.0)
    assert all(p is not net.anchors for p in net.parameters())
    assert "anchors" in dict(net.named_buffers())
    x = torch.rand(6, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    out = net(x)
    assert out.shape == (6, 5) and out.abs().max() <= 1 + 1e-5
    net.set_anchors(torch.randn(3, 24))
    assert net(x).shape == (6, 3)
    with pytest.raises(ClipxUsageError, match="anchor dim"):
        net.set_anchors(torch.randn(3, 7))
    net.set_anchors(anchors)
    net.train()
    atk = build_attack("pgd", net, eps=8 / 255, alpha=2 / 255, steps=3, random_start=True)
    x_adv = atk(x, y).images
    verify_adversarial(x, x_adv, 8 / 255, "Linf", "pgd")
    assert net.training and all(p.requires_grad for p in net.parameters())  # state restored
    assert (x_adv - x).abs().max() > 0


@pytest.mark.parametrize(
    "name,width,dim", [("conv4", 8, 8), ("conv4-512", 16, 16), ("resnet12", 4, 32)]
)
def test_backbones_output_dims(name, width, dim):
    net = build_backbone(name, width)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, dim) and net.out_dim == dim


def test_unknown_backbone_is_a_usage_error():
    with pytest.raises(ClipxUsageError, match="resnet12"):
        build_backbone("vgg")


def test_augment_keeps_shape_range_and_changes_images():
    x = torch.rand(4, 3, 32, 32)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1 and not torch.equal(out, x)


def _shapes_split(n_train: int = 120) -> SplitData:
    """Procedural shapes (10 real, seeded classes): 0-4 seen, 5-9 novel."""

    def take(split, n, classes, seed):
        ds = ProceduralShapes(split=split, n=n, seed=seed, image_size=32)
        xs, ys = zip(*[ds[i] for i in range(len(ds))])
        x, y = torch.stack(xs), torch.tensor(ys)
        keep = torch.isin(y, torch.tensor(classes))
        remap = {c: i for i, c in enumerate(classes)}
        return x[keep], torch.tensor([remap[int(v)] for v in y[keep]])

    tx, ty = take("train", n_train, [0, 1, 2, 3, 4], 0)
    sx, sy = take("test", 60, [0, 1, 2, 3, 4], 1)
    nx, ny = take("test", 60, [5, 6, 7, 8, 9], 1)
    return SplitData(["a", "b", "c", "d", "e"], ["f", "g", "h", "i", "j"], tx, ty, sx, sy, nx, ny)


def test_training_loop_learns_the_seen_classes_and_never_moves_the_anchors():
    data = _shapes_split()
    g = torch.Generator().manual_seed(0)
    base = F.normalize(torch.randn(32, generator=g), dim=0)
    raw = F.normalize(base + 0.8 * torch.randn(10, 32, generator=g) / math.sqrt(32) * 4, dim=-1)
    anchors = build_anchor_set(raw[:5], raw[5:], expand=True)
    cfg = PaperConfig.from_dict(
        dict(
            width=8,
            epochs=12,  # 8 epochs ended at 50% (1 thread) or 52% (2 threads): too close to 0.5
            batch_size=32,
            tau=0.1,
            eps=0.0,
            alpha=0.0,
            train_steps=1,
            test_steps=1,
            augment=False,
            lr=0.05,
            lr_decay_at=1.0,
        )
    )
    logs = []
    model = train_backbone(anchors, data, cfg, logs.append)
    assert torch.allclose(model.anchors, anchors.seen, atol=1e-6)
    assert len(logs) == 12 * math.ceil(len(data.train_x) / 32)
    assert logs[-1]["ace"] < logs[0]["ace"]
    res = evaluate_head(model, anchors.seen, data.train_x, data.train_y, cfg)
    assert res["clean_acc"] > 0.5  # 5 classes: chance is 0.2
    assert res["robust_acc"] <= res["clean_acc"] and res["chance"] == pytest.approx(0.2)


def test_paper_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ClipxUsageError, match="did you mean 'epochs'"):
        PaperConfig.from_dict({"epoch": 2})
    with pytest.raises(ClipxUsageError, match="head"):
        PaperConfig.from_dict({"heads": ["span"]})
    with pytest.raises(ClipxUsageError, match="eps"):
        PaperConfig.from_dict({"eps": "8/2"})
    with pytest.raises(ClipxUsageError, match="train_type"):
        PaperConfig.from_dict({"train_type": "trades"})
    assert PaperConfig.from_dict({"eps": "8/255"}).eps_value == pytest.approx(8 / 255)
