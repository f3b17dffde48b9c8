"""Small CLIPs made here: contrastive pre-training from random init and the cached
"procedural-small" model source."""

from __future__ import annotations

import json
import os

import pytest
import torch

from clip_robust_ext import get
from clip_robust_ext.attacks import build_attack, verify_adversarial
from clip_robust_ext.data import ProceduralShapes
from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.models import ZeroShotClassifier
from clip_robust_ext.training import pretrain as P

TINY_SPEC = {"n_train": 64, "epochs": 1, "batch_size": 32, "warmup_steps": 1}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_materialized_keeps_captions_and_labels():
    data = ProceduralShapes("train", n=12, seed=4)
    mat = P.Materialized(data)
    assert len(mat) == 12 and mat.classnames == data.classnames
    assert torch.equal(mat[3][0], data[3][0]) and mat[3][1] == data[3][1]
    assert mat.caption(7) == data.caption(7)
    no_caps = P.Materialized(torch.utils.data.Subset(data, range(4)))
    assert not hasattr(no_caps, "caption")


def test_cache_key_covers_what_determines_the_weights():
    base = {**P.PROCEDURAL_SMALL_DEFAULTS}
    key = P.procedural_small_key(base)
    assert key == P.procedural_small_key(dict(base)) and len(key) == 16
    assert key != P.procedural_small_key({**base, "seed": 1})
    assert key != P.procedural_small_key({**base, "lr": base["lr"] * 2})
    with pytest.raises(ClipxUsageError, match="unknown option"):
        P.procedural_small_path(epochz=3)


def test_procedural_small_builds_once_and_loads_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPX_CACHE", str(tmp_path))
    loaded = get("models", "procedural-small").obj(progress=False, **TINY_SPEC)
    weights = P.procedural_small_path(**TINY_SPEC)
    meta = json.loads((weights.parent / "meta.json").read_text())
    assert meta["spec"]["n_train"] == 64 and 0 <= meta["zero_shot_test_accuracy"] <= 1
    assert loaded.info["cache_key"] == meta["key"] and loaded.arch == "clipx-tiny-rn"
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".build-")]
    mtime = os.stat(weights).st_mtime_ns
    again = get("models", "procedural-small").obj(progress=False, **TINY_SPEC)  # no retraining
    assert os.stat(weights).st_mtime_ns == mtime
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k])


@pytest.mark.slow
def test_default_procedural_small_is_accurate_and_attackable():
    """The model every offline recipe starts from (cached under CLIPX_CACHE, shared by tests)."""
    loaded = get("models", "procedural-small").obj()
    test = ProceduralShapes("test", n=1000, seed=0)
    acc = P.zero_shot_accuracy(loaded, test)
    assert acc > 0.8, acc
    zs = ZeroShotClassifier(loaded, test.classnames, P.ZERO_SHOT_TEMPLATES).eval()
    xs, ys = zip(*(test[i] for i in range(200)))
    x, y = torch.stack(xs), torch.tensor(ys)
    torch.manual_seed(0)
    x_adv = build_attack("pgd", zs, eps="2/255", alpha="1/255", steps=10)(x, y).images
    verify_adversarial(x, x_adv, 2 / 255)
    with torch.no_grad():
        clean = float((zs(x).argmax(1) == y).float().mean())
        robust = float((zs(x_adv).argmax(1) == y).float().mean())
    print(
        f"procedural-small: zero-shot {acc:.3f} (1000 test), PGD-10 2/255 on 200: {clean:.3f} -> {robust:.3f}"
    )
    assert robust < clean - 0.2
