"""Speed options (models/accelerate.py): channels_last and torch.compile change kernels, not results
beyond rounding, restore the shared CLIP's layout, and are part of what a result depends on."""

from __future__ import annotations

import shutil

import pytest
import torch

from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.evaluation import Protocol
from clip_robust_ext.models import ZeroShotClassifier, load_clip
from clip_robust_ext.models.accelerate import accelerated

CLASSES = ["circle", "square", "triangle"]


def _resnet_clip():
    torch.manual_seed(0)
    return load_clip("clipx-tiny-rn")  # convolutional image tower: channels_last matters there


def _logits_and_grad(loaded, x):
    zs = ZeroShotClassifier(loaded, CLASSES).eval()
    x = x.clone().requires_grad_(True)
    logits = zs(x)
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), x)
    return logits.detach(), grad


def _conv_weights(model):
    return [m.weight for m in model.visual.modules() if isinstance(m, torch.nn.Conv2d)]


def test_channels_last_matches_eager_and_restores_the_layout():
    loaded = _resnet_clip()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ref_logits, ref_grad = _logits_and_grad(loaded, x)
    state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    with accelerated(loaded, channels_last=True) as fast:
        assert fast.channels_last and fast.model is loaded.model  # shared, not copied
        assert all(
            w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(fast.model)
        )
        logits, grad = _logits_and_grad(fast, x)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-3, atol=1e-6)
    assert all(w.is_contiguous() for w in _conv_weights(loaded.model))
    assert all(torch.equal(v, state[k]) for k, v in loaded.model.state_dict().items())
    assert not loaded.channels_last  # the caller's object is untouched


def test_options_are_validated_and_enter_the_result_hash_only_when_on():
    with pytest.raises(ClipxUsageError, match="compile must be true or false"):
        Protocol(compile="yes")
    spec = {"dataset": "cifar10"}
    plain = Protocol().dataset_hash(spec)
    assert Protocol(channels_last=False, compile=False).dataset_hash(spec) == plain
    assert Protocol(channels_last=True).dataset_hash(spec) != plain
    assert Protocol(compile=True).dataset_hash(spec) not in (
        plain,
        Protocol(channels_last=True).dataset_hash(spec),
    )


def test_evaluate_with_channels_last_gives_the_eager_result(tmp_path):
    from clip_robust_ext.evaluation import evaluate

    loaded = _resnet_clip()
    common = dict(
        attacks=[{"name": "pgd", "label": "pgd-2", "steps": 2, "alpha": "1/255"}],
        eps=["2/255"],
        datasets=[{"dataset": "procedural-shapes", "n": 24}],
        templates=["a {}"],
        batch_size=12,
    )
    eager = evaluate(loaded, Protocol(**common), tmp_path / "a", progress=False)
    fast = evaluate(loaded, Protocol(channels_last=True, **common), tmp_path / "b", progress=False)
    assert (fast[0]["clean_acc"], fast[0]["robust_acc"]) == (
        eager[0]["clean_acc"],
        eager[0]["robust_acc"],
    )
    assert fast[0]["protocol_params"]["channels_last"] is True
    assert all(w.is_contiguous() for w in _conv_weights(loaded.model))


@pytest.mark.slow
@pytest.mark.skipif(
    not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")),
    reason="torch.compile on CPU needs a C++ compiler",
)
def test_compiled_image_encoder_matches_eager():
    loaded = _resnet_clip()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ref_logits, ref_grad = _logits_and_grad(loaded, x)
    with accelerated(loaded, compile=True) as fast:
        assert fast.image_encoder is not None and loaded.image_encoder is None
        logits, grad = _logits_and_grad(fast, x)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-3, atol=1e-6)
