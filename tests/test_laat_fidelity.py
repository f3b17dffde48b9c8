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


def test_best_robust_on_test_restores_the_epoch_a_fixed_episode_oracle_picks(monkeypatch):
    """The reference (train.py:221-223, 294, 617-652; samplers.py:30-57) scores every epoch on ONE
    fixed set of n_val episodes by adversarial accuracy alone and keeps the first strictly best
    epoch. The attack is replaced by a deterministic one (each query gets the previous query's
    image), so the oracle below can score each epoch's weights with plain forward passes."""
    import copy

    from clipx_laat import paper

    g = torch.Generator().manual_seed(0)
    seen_anchor = F.normalize(torch.randn(2, 16, generator=g), dim=-1)
    novel_anchor = F.normalize(torch.randn(3, 16, generator=g), dim=-1)
    anchors = AnchorSet(seen_anchor, novel_anchor, None)
    colours = torch.rand(5, 3, 1, 1, generator=g)  # class c's images: colour c + noise
    labels = torch.cat([torch.arange(16) % 2, 2 + torch.arange(24) % 3])
    x = (colours[labels] + 0.3 * torch.rand(40, 3, 16, 16, generator=g)).clamp(0, 1)
    data = SplitData(seen=["a", "b"], novel=["c", "d", "e"], train_x=x[:16],
                     train_y=torch.arange(16) % 2, seen_x=x[:0], seen_y=torch.zeros(0, dtype=torch.long),
                     novel_x=x[16:], novel_y=torch.arange(24) % 3)  # fmt: skip
    cfg = PaperConfig(
        backbone="conv4", width=8, epochs=6, batch_size=4, train_steps=1, test_steps=1, lr=0.2,
        augment=False, select_epoch="best-robust-on-test", select_episodes=3, n_way=2, n_query=4,
        use_linear=True,
    )  # fmt: skip
    monkeypatch.setattr(paper, "attack_batch", lambda name, model, xb, yb, eps, **kw: xb.roll(1, 0))
    nets, calls, snapshots = [], [], []

    class Kept(AnchorNet):  # the trained network, to snapshot its weights after every epoch
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            nets.append(self)

    monkeypatch.setattr(paper, "AnchorNet", Kept)
    evaluate = paper.evaluate_head

    def recording(model, head, xs, ys, c, **kw):
        calls.append((head.clone(), xs.clone(), ys.clone()))
        return evaluate(model, head, xs, ys, c, **kw)

    monkeypatch.setattr(paper, "evaluate_head", recording)

    def log(record):
        if "select_robust_acc" in record:
            snapshots.append(copy.deepcopy(nets[0].state_dict()))

    model = train_backbone(anchors, data, cfg, log)
    per_epoch = [calls[i : i + 3] for i in range(0, len(calls), 3)]
    assert len(per_epoch) == cfg.epochs
    for epoch_calls in per_epoch[1:]:  # the same episodes every epoch
        for (h0, x0, y0), (h, xs, ys) in zip(per_epoch[0], epoch_calls, strict=True):
            assert torch.equal(h, h0) and torch.equal(xs, x0) and torch.equal(ys, y0)

    def oracle_scores(adversarial_only: bool) -> list[float]:
        out = []
        for state in snapshots:
            net = copy.deepcopy(nets[0])
            net.load_state_dict(state)
            net.eval()
            accs = []
            for head, xs, ys in per_epoch[0]:
                net.set_anchors(head)
                with torch.no_grad():
                    adv_ok = net(xs.roll(1, 0)).argmax(1) == ys
                    clean_ok = net(xs).argmax(1) == ys
                ok = adv_ok if adversarial_only else adv_ok & clean_ok
                accs.append(ok.float().mean().item())
            out.append(sum(accs) / len(accs))
        return out

    scores = oracle_scores(adversarial_only=True)
    pick = max(range(len(scores)), key=lambda e: (scores[e], -e))  # first strictly best
    assert model.selection["selected_epoch"] == pick
    assert model.selection["per_epoch_robust_acc"] == pytest.approx(scores)
    assert len({round(s, 6) for s in scores}) > 1  # the epochs differ: the pick means something
    assert scores != pytest.approx(oracle_scores(adversarial_only=False))  # not clean-and-adv
    restored = model.state_dict()
    for name, value in snapshots[pick].items():
        if name != "anchors":
            torch.testing.assert_close(restored[name], value, rtol=0, atol=0)
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
