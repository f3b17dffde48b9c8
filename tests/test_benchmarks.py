"""The benchmark suite (benchmarks/): its baselines are exact, and the --quick run's key ratios hold.

The quick run measures on clipx-small-c10 with one thread; bounds carry a margin for noisy shared
runners (PGD overhead: 1.10 in the suite, 1.25 here; AutoAttack adapter: 1.05 / 1.15)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import CIFAR10_CLASSES, assets, tiny_clip

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.naive import NaiveReencodeClassifier, tecoa_lineage_pgd  # noqa: E402
from benchmarks.run import markdown  # noqa: E402
from benchmarks.timing import interleaved  # noqa: E402
from clip_robust_ext.attacks import attack_mode, build_attack  # noqa: E402
from clip_robust_ext.models import ZeroShotClassifier  # noqa: E402

PGD_MARGIN = 1.25
AA_MARGIN = 1.15


def _pair(templates=("a photo of a {}.", "a {}.")):
    torch.manual_seed(0)
    zs = ZeroShotClassifier(tiny_clip(), CIFAR10_CLASSES[:4], list(templates)).eval()
    return zs, NaiveReencodeClassifier(zs).eval()


def test_naive_wrapper_computes_the_same_logits_and_re_encodes_every_forward():
    zs, naive = _pair()
    x = torch.rand(3, 3, 32, 32)
    zs(x)
    calls = zs.text_calls
    with torch.no_grad():
        cached, again = zs(x), naive(x)
    assert torch.equal(cached, again)
    assert zs.text_calls == calls + 1, "the baseline runs the text tower in every forward"


def test_same_seed_same_adversarial_examples_for_both_naive_variants():
    zs, naive = _pair()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    cached = build_attack("pgd", zs, eps=4 / 255, alpha=1 / 255, steps=3)
    frozen = build_attack("pgd", naive, eps=4 / 255, alpha=1 / 255, steps=3)
    torch.manual_seed(5)
    a = cached(x, y).images
    torch.manual_seed(5)
    b = frozen(x, y).images
    with attack_mode(zs):  # the TeCoA-lineage loop: loss.backward(), input grad read from .grad
        torch.manual_seed(5)
        c = tecoa_lineage_pgd(naive, x, y, 4 / 255, 1 / 255, 3)
    assert torch.equal(a, b)
    assert torch.equal(a, c)
    assert not torch.equal(a, x)


def test_interleaved_alternates_order_and_counts_reps():
    calls: list[str] = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    s = interleaved(fns, rounds=2, reps={"b": 2}, warmup=[])
    assert calls == ["a", "b", "b", "b", "b", "a"]
    assert len(s["a"]) == 2 and len(s["b"]) == 4


def test_markdown_table_lists_every_row():
    rows = [
        {
            "section": "attack",
            "id": "x",
            "figure": "F",
            "setting": "S",
            "value": 1.01,
            "op": "<=",
            "bound": 1.1,
            "ok": True,
        },
        {
            "section": "naive",
            "id": "n",
            "figure": "speedup",
            "setting": "",
            "classes": 10,
            "templates": 1,
            "batch": 32,
            "value": 2.0,
            "predicted": 2.1,
            "agreement": 0.95,
            "identical": True,
            "op": "within 10% of model",
            "bound": 0.1,
            "ok": True,
            "detail": {
                "prompts": 10,
                "image_fb_s": 0.1,
                "text_fwd_s": 0.11,
                "k_naive": 10,
                "k_cached": 10,
            },
        },
    ]
    table = markdown(rows)
    assert "| F | S | 1.010 | <= 1.1 | ok |" in table
    assert "| re-encode, frozen | 10 | 1 | 32 | 10 |" in table


@pytest.mark.slow
def test_quick_benchmark_key_ratios(tmp_path):
    assets()
    out = tmp_path / "quick.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "| Figure |" in done.stdout
    result = json.loads(out.read_text())
    rows = {r["id"]: r for r in result["rows"]}
    assert result["elapsed_s"] < 300, "the quick run grew: keep it under a minute on an idle core"

    pgd = rows["pgd_overhead_bs8"]
    assert pgd["detail"]["text_tower_calls_during_attacks"] == 0
    assert pgd["value"] <= PGD_MARGIN, pgd

    naive = [r for r in result["rows"] if r["section"] == "naive"]
    assert len(naive) == 2
    assert all(r["identical"] for r in naive), [
        (r["id"], r["detail"]["max_abs_diff"]) for r in naive
    ]
    assert all(r["detail"]["naive_text_calls_per_step"] >= 1 for r in naive)
    small, large = sorted(naive, key=lambda r: r["detail"]["prompts"])
    assert large["value"] > small["value"] > 1.0  # more prompts, more re-encoding saved

    aa = rows["autoattack_overhead"]
    assert aa["identical"], aa["detail"]
    assert aa["value"] <= AA_MARGIN, aa
