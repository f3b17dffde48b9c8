"""`clipx interpolate` and `clipx features`: the blends are the weighted means of the two models,
their ends are exactly each model's own `clipx eval`, the feature JSON holds what its plots show,
and bad input exits 2 with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import assets, small_c10, tiny_clip

from clip_robust_ext.analysis import blend_state, check_same_architecture
from clip_robust_ext.analysis.features import separation
from clip_robust_ext.cli import cli
from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.evaluation import result_path
from clip_robust_ext.evaluation.records import model_fingerprint

PROTOCOL = [
    "--protocol",
    "pgd",
    "--set",
    "steps=2",
    "--eps",
    "2/255",
    "--dataset",
    "cifar10-jpegs",
    "--templates",
    "tecoa",
]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_blend_is_the_weighted_mean_and_exact_at_the_ends():
    a = tiny_clip(0).model.state_dict()
    b = tiny_clip(1).model.state_dict()
    for alpha, ref in ((0.0, a), (1.0, b)):
        blended = blend_state(a, b, alpha)
        assert all(torch.equal(blended[k], ref[k]) for k in a), alpha
    mid = blend_state(a, b, 0.3)
    for key, ta in a.items():
        if ta.is_floating_point() and not torch.equal(ta, b[key]):
            assert torch.allclose(mid[key], 0.7 * ta + 0.3 * b[key], atol=1e-6), key
    mask = torch.tensor([float("-inf"), 0.0])  # equal buffers are kept, not lerped into NaN
    assert torch.equal(blend_state({"m": mask}, {"m": mask.clone()}, 0.5)["m"], mask)
    counters = {"i": torch.tensor([1])}, {"i": torch.tensor([2])}  # no mean: the nearer end's
    assert [int(blend_state(*counters, t)["i"]) for t in (0.0, 0.49, 0.5, 1.0)] == [1, 1, 2, 2]


def test_architecture_check_names_the_differences():
    a = {"w": torch.zeros(2, 3), "only_a": torch.zeros(1)}
    b = {"w": torch.zeros(3, 3), "only_b": torch.zeros(1)}
    with pytest.raises(ClipxUsageError) as err:
        check_same_architecture(a, b, ("A", "B"))
    text = str(err.value)
    assert "only_a" in text and "only_b" in text and "w: (2, 3) vs (3, 3)" in text


def test_separation_of_two_tight_classes():
    rng = np.random.default_rng(0)
    centres = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = np.repeat([0, 1], 10)
    emb = centres[labels] + 0.01 * rng.standard_normal((20, 3))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sep = separation(emb, labels, ["a", "b", "c"])
    assert sep["intra"] > 0.99 and abs(sep["inter"]) < 0.05 and sep["silhouette"] > 0.9
    assert [c["n"] for c in sep["per_class"]] == [10, 10, 0]
    assert sep["per_class"][2]["gap"] is None  # an absent class: nothing to average


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["interpolate", "clipx-tiny", "clipx-tiny-rn", "--protocol", "clean", "--n", "2"],
            "not the same architecture",
        ),
        (
            ["interpolate", "clipx-tiny", "clipx-tiny", "--alphas", "0,2", "--protocol", "clean"],
            "--alphas: 2 is outside [0, 1]",
        ),
        (
            ["interpolate", "clipx-tiny", "clipx-tiny", "--alphas", "0,x", "--protocol", "clean"],
            "'x' is not a number",
        ),
        (["interpolate", "w.pt", "w.pt", "--protocol", "clean"], "needs --arch"),
        (["interpolate", "clipx-tiyn", "clipx-tiny", "--protocol", "clean"], "did you mean"),
        (["features", "clipx-tiny", "--protocol", "pgd"], "give a sample count (--n)"),
        (
            [
                "features",
                "clipx-tiny",
                "--protocol",
                "pgd",
                "--n",
                "4",
                "--eps",
                "1/255",
                "--eps",
                "2/255",
            ],
            "give one budget (--eps)",
        ),
        (["features", "clipx-tiny", "--protocol", "clean", "--n", "4"], "exactly one image attack"),
        (["features", "clipx-tiny", "clipx-tiny", "--protocol", "pgd", "--n", "4"], "appear twice"),
        (
            ["features", "clipx-tiny", "--label", "a", "--label", "b", "--protocol", "pgd"],
            "give one per model",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pt").write_bytes(b"")
    if args[0] == "interpolate" and "clipx-tiny-rn" in args:
        args = [*args, "--dataset", "procedural-shapes"]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") <= 2, result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


@pytest.fixture
def noisy_c10(tmp_path):
    """clipx-small-c10 with its image tower moved by fixed noise: a second model of the same
    architecture (as a fine-tuned vision tower is) that scores differently."""
    state = small_c10().model.state_dict()
    g = torch.Generator().manual_seed(1)
    for key, t in state.items():
        if key.startswith("visual.") and t.is_floating_point() and t.ndim >= 2:
            state[key] = t + 0.02 * torch.randn(t.shape, generator=g)
    path = tmp_path / "noisy.pt"
    torch.save(state, path)
    return path


@pytest.mark.slow
def test_interpolation_ends_are_each_models_own_eval(tmp_path, noisy_c10):
    assets()
    common = [*PROTOCOL, "--n", "16"]
    run = invoke(
        "interpolate",
        "clipx-small-c10",
        str(noisy_c10),
        "--alphas",
        "0,0.5,1",
        *common,
        "--run-dir",
        str(tmp_path / "interp"),
        "--json",
    )
    assert run.exit_code == 0, run.output
    doc = json.loads(run.stdout)
    assert (tmp_path / "interp" / "interpolation.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "interp" / "interpolation.json").read_text()) == doc
    assert doc["protocol"] == "pgd" and doc["seed"] == 0 and "torch" in doc["versions"]
    points = {p["alpha"]: p for p in doc["points"]}
    assert sorted(points) == [0.0, 0.5, 1.0]

    evals = {}
    for alpha, extra in ((0.0, []), (1.0, ["--checkpoint", str(noisy_c10)])):
        out = invoke(
            "eval",
            "--model",
            "clipx-small-c10",
            *extra,
            *common,
            "--label",
            "own",
            "--run-dir",
            str(tmp_path / f"eval-{alpha}"),
            "--json",
        )
        assert out.exit_code == 0, out.output
        (rec,) = json.loads(out.stdout)["records"]
        evals[alpha] = rec
        point = points[alpha]
        assert (point["clean_acc"], point["robust_acc"]) == (rec["clean_acc"], rec["robust_acc"])
        assert point["fingerprint"] == rec["model"]["fingerprint"]
        key = rec["dataset_key"]
        mine = json.loads(result_path(tmp_path / "interp", point["label"], "pgd", key).read_text())
        own = json.loads(result_path(tmp_path / f"eval-{alpha}", "own", "pgd", key).read_text())
        assert mine["samples"] == own["samples"]  # same samples, same per-sample outcomes
    assert evals[0.0]["model"]["fingerprint"] != evals[1.0]["model"]["fingerprint"]

    a, b = small_c10(), small_c10()
    b.model.load_state_dict(torch.load(noisy_c10, weights_only=True))
    a.model.load_state_dict(blend_state(a.model.state_dict(), b.model.state_dict(), 0.5))
    assert points[0.5]["fingerprint"] == model_fingerprint(a.model)


@pytest.mark.slow
def test_features_json_holds_what_the_plots_show(tmp_path, noisy_c10):
    assets()
    n = 24
    run = invoke(
        "features",
        "clipx-small-c10",
        str(noisy_c10),
        *PROTOCOL,
        "--n",
        str(n),
        "--bins",
        "20",
        "--run-dir",
        str(tmp_path / "feat"),
        "--json",
    )
    assert run.exit_code == 0, run.output
    doc = json.loads(run.stdout)
    for name in ("cosine", "separation", "projection"):
        assert (tmp_path / "feat" / f"features_{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert doc["protocol"] == "pgd" and doc["seed"] == 0 and doc["eps_str"] == "2/255"
    assert doc["attack"] == "pgd-2" and len(doc["indices"]) == len(doc["labels"]) == n
    edges = np.asarray(doc["histogram_edges"])
    assert len(edges) == 21 and edges[-1] == 1.0
    labels = [m["label"] for m in doc["models"]]
    assert labels[0] == "clipx-small-c10" and labels[1].startswith("noisy-")
    for m in doc["models"]:
        cos = np.asarray(m["cosine"]["values"])
        assert len(cos) == n
        assert abs(m["cosine"]["clean_self_mean"] - 1.0) < 1e-6
        assert cos.max() < 1.0 - 1e-4  # every attacked embedding moved off its clean one
        assert m["cosine"]["counts"] == np.histogram(cos, bins=edges)[0].tolist()
        assert sum(m["cosine"]["counts"]) == n
        assert m["adversarial_acc"] < m["clean_acc"]
        for kind in ("clean", "adversarial"):
            sep = m["separation"][kind]
            assert len(sep["per_class"]) == len(doc["classnames"]) == 10
            assert sum(c["n"] for c in sep["per_class"]) == n
            assert -1.0 <= sep["silhouette"] <= 1.0
        proj = m["projection"]
        assert proj["method"] == "pca" and len(proj["clean"]) == len(proj["adversarial"]) == n
    a, b = doc["models"]
    assert a["fingerprint"] != b["fingerprint"] and a["cosine"]["values"] != b["cosine"]["values"]
