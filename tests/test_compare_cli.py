"""`clipx compare` and samples.npz on real evaluations: the small CIFAR-10 CLIP and a copy with
noised image-tower weights, evaluated on the same 32 test images (PGD-2 at 1/255 and 2/255); a
third evaluation on 24 images must be refused."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import cifar10_test, small_c10

from clip_robust_ext.cli import cli
from clip_robust_ext.evaluation import Protocol, evaluate, result_path
from clip_robust_ext.evaluation.outcomes import SAMPLES_FILE, export_run, read_samples
from clip_robust_ext.evaluation.pairing import compare_models

KEY = "cifar10-jpegs_test"


def _protocol(n: int) -> Protocol:
    return Protocol(
        name="t",
        datasets=[{"dataset": "cifar10-jpegs", "split": "test", "n": n}],
        attacks=[{"name": "pgd", "label": "pgd-2", "params": {"steps": 2, "alpha": "eps/2"}}],
        eps=["1/255", "2/255"],
        batch_size=16,
        templates="tecoa",
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    model = small_c10()
    evaluate(model, _protocol(32), root / "run", label="c10", progress=False)
    noisy = small_c10()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in noisy.model.visual.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    evaluate(noisy, _protocol(32), root / "run", label="noisy", progress=False)
    evaluate(model, _protocol(24), root / "other", label="c10", progress=False)
    return root


def _raw(run, label):
    """The per-sample strings of the eval result file, read without clipx."""
    data = json.loads(result_path(run, label, "t", KEY).read_text())["samples"]
    clean = np.array([c == "1" for c in data["clean"]])
    pgd = np.array([c == "1" for c in data["attacks"]["pgd-2@1/255"]])
    return data, clean, clean & pgd


def test_compare_cli_on_a_real_run(runs):
    _, _, rob_a = _raw(runs / "run", "c10")
    _, _, rob_b = _raw(runs / "run", "noisy")
    a_only, b_only = int((rob_a & ~rob_b).sum()), int((rob_b & ~rob_a).sum())
    assert a_only + b_only > 0  # the noise moved some outcomes
    args = ["compare", f"{runs / 'run'}:c10", f"{runs / 'run'}:noisy", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert (doc["a_only"], doc["b_only"]) == (a_only, b_only)
    assert doc["diff"] == pytest.approx(100 * (a_only - b_only) / 32)
    k, n = min(a_only, b_only), a_only + b_only
    assert doc["p"] == pytest.approx(min(1, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n))
    assert (doc["metric"], doc["eps"], doc["n_images"], doc["n_seeds"]) == (
        "robust",
        "1/255",
        32,
        1,
    )
    assert doc["lo"] <= doc["diff"] <= doc["hi"]
    text = CliRunner().invoke(cli, args[:3] + ["--sentence"]).output
    assert text.startswith(f"c10 - noisy, robust@1/255, {KEY}: ")
    assert "(32 images, 1 seed)" in text and " noisy on robust@1/255" in text


def test_refuses_different_samples_naming_the_field(runs):
    result = CliRunner().invoke(cli, ["compare", f"{runs / 'run'}:c10", str(runs / "other")])
    assert result.exit_code == 2
    assert "sample indices (n = 32 vs 24)" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    bad = CliRunner().invoke(cli, ["compare", str(runs / "run"), str(runs / "other")])
    assert bad.exit_code == 2 and "several models" in bad.output and "c10, noisy" in bad.output


def test_samples_file_round_trip_and_labels(runs):
    path = export_run(runs / "run")
    assert path == runs / "run" / SAMPLES_FILE
    blocks = {b.label: b for b in read_samples(path)}
    data, clean, robust = _raw(runs / "run", "c10")
    block = blocks["c10"]
    assert block.indices.tolist() == data["indices"]
    ds = cifar10_test()
    assert block.labels.tolist() == [ds[i][1] for i in data["indices"]]
    assert (block.metric("clean", None) == clean).all()
    assert (block.metric("robust", "1/255") == robust).all()
    assert (block.metric("pgd-2", "1/255") == robust).all()  # one attack: it is the worst case
    # the file answers like the run dir it came from
    from_file = compare_models(f"{path}:c10", f"{path}:noisy", resamples=500)
    from_run = compare_models(f"{runs / 'run'}:c10", f"{runs / 'run'}:noisy", resamples=500)
    assert from_file == from_run


def test_all_against_a_reference_with_holm(runs):
    result = CliRunner().invoke(cli, ["compare", str(runs / "run"), "--all", "c10", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert (row["a"], row["b"]) == ("noisy", "c10")
    assert row["p_holm"] == pytest.approx(row["p"])  # a family of one


def _documented_read(path, label, view):
    """robust@1/255 of one block, read with numpy alone from the documented layout."""
    with np.load(path) as z:
        manifest = json.loads(str(z["manifest"]))
        (i,) = [
            k for k, b in enumerate(manifest["blocks"]) if (b["label"], b["view"]) == (label, view)
        ]
        block = manifest["blocks"][i]
        flags = np.unpackbits(z[f"b{i}.flags"], axis=1, count=block["n"]).astype(bool)
        cols = dict(zip(block["columns"], flags))
    return cols["clean"] & cols["pgd-10@1/255"] & cols["apgd-ce@1/255"]


def test_compare_on_the_committed_zero_shot_outcomes():
    from helpers import REPO

    path = REPO / "docs" / "results" / "zs-study" / "seed-0" / "samples.npz"
    view = "cifar10-jpegs_test_unseen-all-names"
    tecoa, clip = _documented_read(path, "tecoa", view), _documented_read(path, "clip", view)
    a_only, b_only = int((tecoa & ~clip).sum()), int((clip & ~tecoa).sum())
    result = CliRunner().invoke(
        cli, ["compare", f"{path}:tecoa", f"{path}:clip", "--view", "unseen-all-names", "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert (doc["a_only"], doc["b_only"], doc["n_images"]) == (a_only, b_only, 64)
    assert doc["acc_b"] == pytest.approx(100 * clip.mean())
    summary = json.loads((path.parents[1] / "summary.json").read_text())  # the committed table
    (row,) = [
        r
        for r in summary
        if (r["label"], r["dataset_key"], r["eps_str"]) == ("clip", view, "1/255")
    ]
    assert doc["acc_b"] == pytest.approx(row["robust"]["values"][0])  # 29.7: the same start model
    k, n = min(a_only, b_only), a_only + b_only
    assert doc["p"] == pytest.approx(min(1, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n))
    assert doc["verdict"] == "beats" and doc["lo"] > 0  # docs/statistics.md: +15.6, p = 0.002
