"""Adversarial prompt tuning (clipx_prompt, APT) and the learned prompt context in the core:
the class matrix follows the context, training moves only the context, checkpoints carry it."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from helpers import tiny_clip

from clip_robust_ext.api import (
    PromptContext,
    ZeroShotClassifier,
    attach_prompt_context,
    build_model,
    get,
    load_weights,
    model_fingerprint,
    prompt_context_of,
    train,
)
from clip_robust_ext.cli import cli
from clip_robust_ext.data import ProceduralShapes
from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.models import save_open_clip_checkpoint

INIT = "This is a photo of a"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _images(n: int = 6):
    data = ProceduralShapes("test", n=n, seed=1)
    return data.classnames, torch.stack([data[i][0] for i in range(n)])


def test_context_makes_the_class_matrix_and_the_cache_follows_its_values():
    classnames, x = _images()
    zs = ZeroShotClassifier(tiny_clip(), classnames).eval()
    # a context initialised from words is exactly those words: the splice is the token embedding
    context = PromptContext.initial(zs.clip, zs.tokenizer, init=INIT)
    attach_prompt_context(zs.clip, context)
    words = zs.text_matrix([[f"{INIT} {c}."] for c in classnames])
    with torch.no_grad():
        assert torch.allclose(zs.class_matrix(), words, atol=1e-6)
        first, calls = zs(x), zs.text_calls
        assert torch.equal(zs(x), first) and zs.text_calls == calls  # unchanged: cached
        context.shared.add_(0.3)  # in place: a version bump
        second = zs(x)
        assert zs.text_calls == calls + 1 and not torch.allclose(second, first)
        context.shared.data.mul_(-1.0)  # through .data: no version bump, the values still count
        third = zs(x)
        assert zs.text_calls == calls + 2 and not torch.allclose(third, second)
    # while the context trains, the matrix carries its graph (recomputed per forward)
    zs(x).sum().backward()
    assert context.shared.grad is not None and context.shared.grad.abs().sum() > 0
    # strings would bypass the context: refused rather than silently scored without it
    with pytest.raises(ClipxUsageError, match="learned prompt context"):
        zs.with_prompts([[c] for c in classnames]).class_matrix()


def test_class_specific_offsets_move_only_their_class_and_unknown_classes_use_shared():
    classnames, x = _images()
    zs = ZeroShotClassifier(tiny_clip(), classnames).eval()
    seen = classnames[:3]
    context = PromptContext.initial(
        zs.clip, zs.tokenizer, n_ctx=3, classnames=seen, class_specific=True
    )
    attach_prompt_context(zs.clip, context)
    with torch.no_grad():
        before = zs.class_matrix().clone()
        context.specific[1].add_(0.5)
        after = zs.class_matrix()
    moved = (after - before).abs().sum(1) > 1e-6
    assert moved.tolist() == [c == seen[1] for c in classnames]


def _apt_run(tmp_path, **apt):
    data = ProceduralShapes("train", n=8, seed=0)
    spec = {"source": "open_clip", "arch": "clipx-tiny"}
    loaded = build_model(spec, seed=0)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    defense = get("defenses", "apt").obj(eps="2/255", alpha="1/255", steps=2, **apt)
    config = {"max_steps": 1, "batch_size": 8, "lr": 1e-2, "optimizer": "adamw"}
    train(loaded, defense, data, config, tmp_path / "apt", progress=False)
    return spec, data, loaded, before


def test_one_apt_step_changes_only_the_context_and_the_checkpoint_round_trips(tmp_path):
    spec, data, loaded, before = _apt_run(tmp_path, init=INIT)
    after = loaded.model.state_dict()
    towers = [k for k in before]
    assert all(torch.equal(before[k], after[k]) for k in towers)  # both towers bit-identical
    start = PromptContext.initial(loaded.model, loaded.tokenizer, init=INIT).shared
    assert not torch.allclose(after["prompt_context.shared"], start)  # the context moved
    _, x = _images()
    trained = ZeroShotClassifier(loaded, data.classnames).eval()
    with torch.no_grad():
        logits = trained(x)
    # final.pt (the runner's path) and a safetensors export load into a fresh model, same logits
    safetensors = save_open_clip_checkpoint(loaded.model, tmp_path / "apt.safetensors")
    for path in (tmp_path / "apt" / "final.pt", safetensors):
        fresh = load_weights(build_model(spec, seed=1), path)
        assert prompt_context_of(fresh.model) is not None
        assert model_fingerprint(fresh.model) == model_fingerprint(loaded.model)
        with torch.no_grad():
            again = ZeroShotClassifier(fresh, data.classnames).eval()(x)
        assert torch.equal(again, logits)
    plain = build_model(spec, seed=0)
    assert model_fingerprint(plain.model) != model_fingerprint(loaded.model)
    # the Trainer's resume path: a fresh model takes the context from checkpoint.pt
    defense = get("defenses", "apt").obj(eps="2/255", alpha="1/255", steps=2, init=INIT)
    config = {"max_steps": 1, "batch_size": 8, "lr": 1e-2, "optimizer": "adamw"}
    resumed = train(plain, defense, data, config, tmp_path / "apt", progress=False)
    assert model_fingerprint(resumed.model) == model_fingerprint(loaded.model)


def test_constant_attack_prompts_and_class_specific_train(tmp_path):
    spec, data, loaded, before = _apt_run(
        tmp_path, n_ctx=2, class_specific=True, attack_prompt="constant"
    )
    context = prompt_context_of(loaded.model)
    assert context.classnames == data.classnames and context.specific.abs().sum() > 0
    fresh = load_weights(build_model(spec, seed=1), tmp_path / "apt" / "final.pt")
    assert prompt_context_of(fresh.model).classnames == data.classnames


def test_listed_and_bad_parameters_are_usage_errors():
    out = CliRunner().invoke(cli, ["defenses", "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    rows = rows.get("defenses", rows) if isinstance(rows, dict) else rows
    assert any(r["name"] == "apt" and r["plugin"] == "prompt" for r in rows)
    apt = get("defenses", "apt").obj
    assert apt().trainable == "prompt" and apt().config()["eps"] == "1/255"
    for bad in ({"attack_prompt": "perturbed"}, {"n_ctx": 0}, {"class_specific": "yes"}):
        with pytest.raises(ClipxUsageError):
            apt(**bad)
    zs = ZeroShotClassifier(tiny_clip(), ["a", "b"])
    with pytest.raises(ClipxUsageError, match="n_ctx"):
        PromptContext.initial(zs.clip, zs.tokenizer, n_ctx=3, init=INIT)
    # clipx-tiny reads 16 tokens: 13 vectors + SOT + "a." + EOT do not fit; refused, not truncated
    attach_prompt_context(zs.clip, PromptContext.initial(zs.clip, zs.tokenizer, n_ctx=13))
    with pytest.raises(ClipxUsageError, match="exceed the text context length"):
        zs.class_matrix()
