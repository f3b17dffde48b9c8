"""LAAT paper mode's reference-code options (docs/FIDELITY.md#laat): model selection on the test
split, the reference's ResNet-12 widths and DropBlock, and the projection switch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from clipx_laat.anchors import AnchorSet
from clipx_laat.backbones import AnchorNet, DropBlock, build_backbone
from clipx_laat.paper import PaperConfig, SplitData, train_backbone
from clipx_laat.selection import BestEpoch

from clip_robust_ext.errors import ClipxUsageError


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_best_epoch_keeps_the_first_strictly_best_weights():
    layer = torch.nn.Linear(2, 1, bias=False)
    best = BestEpoch(layer)
    for epoch, score in enumerate([0.2, 0.5, 0.5, 0.3]):  # a tie keeps the earlier epoch
        with torch.no_grad():
            layer.weight.fill_(float(epoch))
        best.update(epoch, score)
    best.restore()
    assert torch.equal(layer.weight, torch.ones(1, 2))
    assert best.summary()["selected_epoch"] == 1
    assert best.summary()["per_epoch_robust_acc"] == [0.2, 0.5, 0.5, 0.3]


def test_resnet12_640_has_the_reference_widths():
    net = build_backbone("resnet12-640")
    widths = [block.convs[0].out_channels for block in net.layers]
    assert widths == [64, 160, 320, 640] and net.out_dim == 640
    assert [b.convs[0].out_channels for b in build_backbone("resnet12").layers] == [
        64,
        128,
        256,
        512,
    ]
    torch.manual_seed(0)
    assert net.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 640)
    with pytest.raises(ClipxUsageError, match="fixed widths"):
        build_backbone("resnet12-640", width=32)
    with pytest.raises(ClipxUsageError, match="ResNet-12"):
        build_backbone("conv4", drop_rate=0.1)


def test_dropblock_drops_whole_squares_on_the_reference_schedule():
    block, rate, size = 2, 0.3, 10
    drop = DropBlock(rate, block)
    x = torch.ones(64, 8, size, size)
    assert torch.equal(drop.eval()(x), x)  # eval mode: identity
    drop.train()
    drop.calls = 0
    assert drop.gamma(size) == 0.0  # the keep rate starts at 1 and ramps down
    drop.calls = DropBlock.RAMP  # ramp done: keep rate 1 - drop_rate
    assert drop.gamma(size) == pytest.approx(rate / block**2 * size**2 / (size - block + 1) ** 2)
    torch.manual_seed(0)
    out = drop(x)
    dropped = (out == 0).float()
    assert 0.5 * rate < float(dropped.mean()) < 1.2 * rate
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, x.numel() / float((out != 0).sum())))
    # every dropped unit lies in a fully dropped block x block square (opening == the mask)
    eroded = -F.max_pool2d(-dropped, block, stride=1)
    opened = F.max_pool2d(F.pad(eroded, (block - 1,) * 4), block, stride=1)
    assert torch.equal(opened, dropped)
    net = build_backbone("resnet12-640", drop_rate=0.1, dropblock_size=2)
    kinds = [type(b.drop).__name__ for b in net.layers]
    assert kinds == ["Dropout", "Dropout", "DropBlock", "DropBlock"]


def test_use_linear_switch():
    anchors = F.normalize(torch.randn(3, 64), dim=-1)
    auto = AnchorNet(build_backbone("conv4", 64), anchors)
    forced = AnchorNet(build_backbone("conv4", 64), anchors, use_linear=True)
    assert isinstance(auto.proj, torch.nn.Identity) and isinstance(forced.proj, torch.nn.Linear)
    assert forced.proj.bias is None
    with pytest.raises(ClipxUsageError, match="use_linear"):
        PaperConfig.from_dict({"use_linear": "yes"})
    with pytest.raises(ClipxUsageError, match="select_epoch"):
        PaperConfig.from_dict({"select_epoch": "best"})


def test_best_robust_on_test_selection_restores_the_best_epoch():
    g = torch.Generator().manual_seed(0)
    seen_anchor = F.normalize(torch.randn(2, 16, generator=g), dim=-1)
    novel_anchor = F.normalize(torch.randn(3, 16, generator=g), dim=-1)
    anchors = AnchorSet(seen_anchor, novel_anchor, None)
    x = torch.rand(24, 3, 16, 16, generator=g)
    data = SplitData(
        seen=["a", "b"],
        novel=["c", "d", "e"],
        train_x=x[:16],
        train_y=torch.arange(16) % 2,
        seen_x=x[:0],
        seen_y=torch.zeros(0, dtype=torch.long),
        novel_x=x[:12],
        novel_y=torch.arange(12) % 3,
    )
    cfg = PaperConfig(
        backbone="conv4", width=8, epochs=3, batch_size=8, train_steps=1, test_steps=1,
        augment=False, select_epoch="best-robust-on-test", select_episodes=2, n_way=3, n_query=2,
        use_linear=True,
    )  # fmt: skip
    records = []
    model = train_backbone(anchors, data, cfg, records.append)
    scores = [r["select_robust_acc"] for r in records if "select_robust_acc" in r]
    assert len(scores) == 3
    summary = model.selection
    assert summary["selected_epoch"] == scores.index(max(scores))
    assert summary["per_epoch_robust_acc"] == scores
    torch.testing.assert_close(model.anchors, seen_anchor)  # back on the training head


def test_support_prototypes_are_the_references_k_shot_head():
    """Written from train.py's description: the mean clean support feature per class, mixed with
    the anchor as text_weight * t + K * mean when text_weight > 0, then normalised."""
    from clipx_laat.paper import evaluate_episodes, support_prototypes

    torch.manual_seed(0)
    anchors = F.normalize(torch.randn(3, 16), dim=-1)
    net = AnchorNet(build_backbone("conv4", 8), anchors, use_linear=True).eval()
    support = torch.rand(3, 2, 3, 16, 16)  # 3 classes, K = 2
    with torch.no_grad():
        feats = net.features(support.flatten(0, 1)).view(3, 2, -1)
    torch.testing.assert_close(
        support_prototypes(net, anchors, support), F.normalize(feats.mean(1), dim=-1)
    )
    mixed = F.normalize(0.5 * anchors + 2 * feats.mean(1), dim=-1)
    torch.testing.assert_close(support_prototypes(net, anchors, support, text_weight=0.5), mixed)

    x, y = torch.rand(12, 3, 16, 16), torch.arange(12) % 3
    cfg = PaperConfig(episodes=2, n_way=3, n_support=1, n_query=2, test_steps=1)
    res = evaluate_episodes(net, anchors, x, y, cfg)
    assert res["n_support"] == 1 and 0 <= res["clean_acc"]["mean"] <= 1
    with pytest.raises(ClipxUsageError, match="n_support"):
        evaluate_episodes(net, anchors, x, y, PaperConfig(episodes=1, n_way=3, n_support=4))
