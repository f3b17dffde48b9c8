"""Protocol presets state the resolution the attack runs at, per dataset, as each lineage's
evaluation code does (docs/FIDELITY.md#protocol-presets), and results record it."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_clip

from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.evaluation import Protocol
from clip_robust_ext.evaluation.engine import evaluate
from clip_robust_ext.evaluation.protocols import get_protocol

NATIVE_IN_BOTH = {"cifar10", "cifar100", "stl10"}  # TeCoA utils.py and CLIP_benchmark cli.py


@pytest.mark.parametrize("preset", ["tecoa-16", "fare-aa"])
def test_presets_attack_cifar_and_stl_at_native_resolution_and_the_rest_at_224(preset):
    proto = get_protocol(preset)
    assert proto.lineage  # each preset says which evaluation code it follows
    seen = {}
    for spec in proto.datasets:
        seen[spec["dataset"]] = proto.attacked_resolution(spec)
    native = {d for d, r in seen.items() if r == "native"}
    assert native == NATIVE_IN_BOTH | ({"tinyimagenet"} & set(seen))
    assert all(r == 224 for d, r in seen.items() if d not in native)
    assert "imagenet" in seen and "cifar10" in seen


def test_resolution_is_settable_per_dataset_and_validated():
    proto = get_protocol("fare-aa", resolution={"cifar10": 224, "imagenet": "native"})
    by_name = {s["dataset"]: s for s in proto.datasets}
    assert proto.attacked_resolution(by_name["cifar10"]) == 224
    assert proto.resolution_for(by_name["imagenet"]) is None
    assert proto.attacked_resolution(by_name["cifar100"]) == "native"
    spec = {"dataset": "cifar10", "split": "test", "resolution": 96}
    assert proto.resolution_for(spec) == 96  # the dataset entry wins
    everything = get_protocol("tecoa-16", resolution=224)
    assert {everything.attacked_resolution(s) for s in everything.datasets} == {224}
    with pytest.raises(ClipxUsageError, match="resolution"):
        get_protocol("tecoa-16", resolution="huge")
    with pytest.raises(ClipxUsageError, match="resolution"):
        Protocol(datasets=[{"dataset": "cifar10", "resolution": 3}])


def test_results_record_the_attacked_resolution(tmp_path):
    torch.manual_seed(0)
    loaded = tiny_clip(0)
    base = dict(
        name="res",
        attacks=[{"name": "pgd", "params": {"steps": 1, "alpha": "eps"}}],
        eps=["4/255"],
        templates="shapes",
        batch_size=8,
        lineage="test lineage",
    )
    specs = [
        {"dataset": "procedural-shapes", "split": "test", "n": 8},
        {"dataset": "procedural-shapes", "split": "test", "n": 8, "resolution": 48, "seed": 1},
    ]
    records = evaluate(loaded, Protocol(datasets=specs, **base), tmp_path, progress=False)
    by_size = sorted((r["attack_resolution"], r["lineage"]) for r in records)
    assert by_size == [([32, 32], "test lineage"), ([48, 48], "test lineage")]
