"""Every published checkpoint format round-trips the weights exactly, loaded without pickle code."""

from __future__ import annotations

import pickle

import pytest
import torch
from helpers import tiny_clip

from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.models import load_clip, save_open_clip_checkpoint


def _assert_same(a: torch.nn.Module, b: torch.nn.Module, prefix: str = "") -> None:
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sa if k.startswith(prefix)]
    assert keys
    for k in keys:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture
def source():
    return tiny_clip(seed=123).model


def test_full_state_dict(tmp_path, source):
    path = tmp_path / "full.pt"
    torch.save(source.state_dict(), path)
    _assert_same(source, load_clip("clipx-tiny", pretrained=path).model)


def test_wrapped_state_dict_with_module_prefix(tmp_path, source):
    path = tmp_path / "wrapped.pt"
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, path)
    _assert_same(source, load_clip("clipx-tiny", pretrained=path).model)


@pytest.mark.parametrize("layout", ["bare", "prefixed", "vision_encoder_state_dict"])
def test_vision_only_checkpoint(tmp_path, source, layout):
    path = tmp_path / f"visual-{layout}.pt"
    visual = source.visual.state_dict()
    if layout == "bare":  # FARE / TeCoA release: the visual tower's own keys
        torch.save(visual, path)
    elif layout == "prefixed":
        torch.save({f"visual.{k}": v for k, v in visual.items()}, path)
    else:
        torch.save({"vision_encoder_state_dict": visual}, path)
    loaded = load_clip("clipx-tiny", pretrained=path).model
    _assert_same(source, loaded, prefix="visual.")
    # the text tower keeps its (random) init: vision-only checkpoints leave it alone
    assert not torch.equal(loaded.token_embedding.weight, source.token_embedding.weight)


def test_safetensors(tmp_path, source):
    path = save_open_clip_checkpoint(source, tmp_path / "model.safetensors")
    _assert_same(source, load_clip("clipx-tiny", pretrained=path).model)


def test_exported_checkpoint_loads_in_open_clip_alone(tmp_path, source):
    import open_clip

    path = save_open_clip_checkpoint(source, tmp_path / "export.pt")
    plain = open_clip.create_model("clipx-tiny", pretrained=str(path))
    _assert_same(source, plain)


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": _Exploit()}, fh)
    with pytest.raises(ClipxUsageError, match="would run code"):
        load_clip("clipx-tiny", pretrained=path)


def test_wrong_architecture_names_mismatching_keys(tmp_path):
    small = load_clip("clipx-small").model
    path = tmp_path / "small.pt"
    torch.save(small.state_dict(), path)
    with pytest.raises(ClipxUsageError, match="shape mismatch"):
        load_clip("clipx-tiny", pretrained=path)
