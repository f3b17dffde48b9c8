"""Class splits (seen / unseen), held-out images, and the multi-seed aggregation."""

from __future__ import annotations

import json

import pytest
from helpers import CIFAR10_CLASSES, assets

from clip_robust_ext.data import CIFAR10_SPLITS, SHAPES_SPLITS, ProceduralShapes, restrict
from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.evaluation.protocols import dataset_key
from clip_robust_ext.evaluation.spread import aggregate, mean_std, spread_table
from clip_robust_ext.recipes import resolve
from clip_robust_ext.run.builders import build_dataset


def test_declared_splits_partition_the_classes():
    for splits, names in ((CIFAR10_SPLITS, CIFAR10_CLASSES), (SHAPES_SPLITS, None)):
        names = names or ProceduralShapes("test", n=10).classnames
        seen, unseen = set(splits["seen"]), set(splits["unseen"])
        assert not seen & unseen
        assert seen | unseen == set(names)
        assert len(seen) == len(unseen) == 5


def test_unseen_view_is_zero_shot_over_the_subset_names_and_relabels():
    base = ProceduralShapes("test", n=200)
    ds = restrict(base, {"classes": "unseen"})
    assert ds.classnames == SHAPES_SPLITS["unseen"]
    assert len(ds) == 100  # labels cycle over 10 classes
    for i in range(0, len(ds), 17):
        image, label = ds[i]
        original = base[ds.indices[i]][1]
        assert base.classnames[original] == ds.classnames[label]  # same class, new index
        assert ds.targets[i] == label


def test_generalised_view_keeps_every_name_and_only_unseen_images():
    base = ProceduralShapes("test", n=200)
    ds = restrict(base, {"classes": "unseen", "label_space": "all"})
    assert ds.classnames == base.classnames
    assert {base.classnames[t] for t in ds.targets} == set(SHAPES_SPLITS["unseen"])
    assert ds[3][1] == base[ds.indices[3]][1]


def test_holdout_is_fixed_disjoint_and_independent_of_the_class_choice():
    base = ProceduralShapes("train", n=400)
    spec = {"classes": "seen", "holdout_per_class": 8}
    held = restrict(base, {**spec, "holdout": "only"})
    fit = restrict(base, {**spec, "holdout": "exclude"})
    assert len(held) == 5 * 8 and len(fit) == 200 - 40
    assert not set(held.indices) & set(fit.indices)
    assert set(held.indices) | set(fit.indices) == set(restrict(base, {"classes": "seen"}).indices)
    # the held-out images of a class do not depend on which other classes are chosen
    again = restrict(base, {"classes": ["circle"], "holdout": "only", "holdout_per_class": 8})
    circle = [i for i, t in zip(held.indices, held.targets) if held.classnames[t] == "circle"]
    assert sorted(again.indices) == sorted(circle)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"classes": "unsen"}, "did you mean 'unseen'"),
        ({"classes": ["circle", "pentagon"]}, "unknown class names ['pentagon']"),
        ({"classes": ["circle", "circle"]}, "listed twice"),
        ({"classes": "seen", "label_space": "every"}, "label_space must be one of"),
        ({"label_space": "all"}, "needs classes"),
        ({"classes": "seen", "holdout": "yes"}, "holdout must be one of"),
        ({"classes": "seen", "holdout_per_class": 5}, "needs holdout"),
        ({"classes": 3}, "declared split name or a non-empty list"),
    ],
)
def test_bad_subset_specs_are_usage_errors(spec, message):
    with pytest.raises(ClipxUsageError, match=None) as info:
        restrict(ProceduralShapes("test", n=20), spec)
    assert message in str(info.value)


def test_dataset_keys_name_the_view():
    base = {"dataset": "cifar10-jpegs", "split": "test"}
    assert dataset_key({**base, "classes": "unseen"}) == "cifar10-jpegs_test_unseen"
    assert (
        dataset_key({**base, "classes": "unseen", "label_space": "all"})
        == "cifar10-jpegs_test_unseen-all-names"
    )
    assert dataset_key({**base, "classes": "seen"}) == "cifar10-jpegs_test_seen"
    explicit = dataset_key({**base, "classes": ["cat", "dog"]})
    assert explicit.startswith("cifar10-jpegs_test_2classes_")
    assert explicit != dataset_key({**base, "classes": ["cat", "frog"]})


def test_recipe_show_rejects_a_misspelt_split_key_before_anything_runs():
    with pytest.raises(ClipxUsageError, match="label_space must be one of"):
        resolve("mmcoa", overrides=["data.label_space=al"])


def test_zs_study_trains_only_on_seen_classes_and_outside_the_holdout():
    assets()
    resolved = resolve("zs-study")
    dataset, classnames, _ = build_dataset(resolved.doc["data"], resolved.seed)
    assert classnames == CIFAR10_SPLITS["seen"]
    base = dataset.dataset.dataset  # _Subset (n) over ClassSubset over the tar
    seen = {base.classnames.index(c) for c in CIFAR10_SPLITS["seen"]}
    underlying = [dataset.dataset.indices[i] for i in dataset.indices]
    assert all(base.targets[i] in seen for i in underlying)
    # the sweep's validation images are never training images
    sweep = resolve("zs-study", profile="sweep")
    val_specs = sweep.doc["evaluate"]["datasets"]
    assert val_specs and all(
        s["split"] == "train" and s["holdout"] == "only" and s["classes"] == "seen"
        for s in val_specs
    )
    from clip_robust_ext.evaluation.engine import open_eval_dataset as eval_dataset

    held = eval_dataset(val_specs[0])
    assert not set(held.indices) & set(underlying)


def test_the_sweep_never_reads_test_images():
    resolved = resolve("zs-study", profile="sweep")
    specs = [resolved.doc["data"], *resolved.doc["evaluate"]["datasets"]]
    assert all(isinstance(s, dict) and s.get("split") == "train" for s in specs)


def test_for_seed_changes_the_run_and_training_seeds():
    resolved = resolve("zs-study")
    assert resolved.seeds == [0, 1, 2]
    one = resolved.for_seed(2)
    assert one.seeds is None and one.seed == 2
    assert all(m["train"]["seed"] == 2 for m in one.methods)
    assert json.dumps(resolved.doc["data"]) == json.dumps(one.doc["data"])


def test_aggregate_gives_mean_sample_std_and_keeps_per_seed_values():
    recs = [
        {
            "label": "a",
            "dataset": "d",
            "dataset_key": "d_unseen",
            "eps": 0.1,
            "eps_str": "x",
            "clean_acc": c,
            "robust_acc": r,
            "per_attack": {"pgd": r},
            "run_seed": s,
        }
        for s, c, r in ((0, 50.0, 10.0), (1, 60.0, 20.0), (2, 70.0, 30.0))
    ]
    (row,) = aggregate(recs)
    assert row["n_seeds"] == 3 and row["seeds"] == [0, 1, 2]
    assert row["clean"]["mean"] == pytest.approx(60.0)
    assert row["clean"]["std"] == pytest.approx(10.0)  # sample std, ddof 1
    assert row["robust"]["values"] == [10.0, 20.0, 30.0]
    assert mean_std([5.0]) == (5.0, 0.0)
    assert "60.0 ± 10.0" in spread_table([row])


def test_sweep_winner_is_the_best_mean_of_clean_and_robust():
    from clip_robust_ext.evaluation.sweep import sweep_markdown, sweep_rows

    recs = [
        {"label": "clip", "clean_acc": 90.0, "robust_acc": 10.0},
        {"label": "tecoa-lr2e-4", "clean_acc": 85.0, "robust_acc": 30.0},
        {"label": "tecoa-lr1e-3", "clean_acc": 60.0, "robust_acc": 50.0},  # 55 < 57.5
        {"label": "fare-lr1e-3", "clean_acc": 80.0, "robust_acc": 20.0},
    ]
    rows = sweep_rows(recs)
    best = {(r["method"], r["setting"]) for r in rows if r["best"]}
    assert best == {("tecoa", "2e-4"), ("fare", "1e-3")}
    assert "| tecoa | 2e-4 | 85.0 | 30.0 | 57.5 | ✓ |" in sweep_markdown(rows, recs[0])


def test_a_changed_split_declaration_recomputes_instead_of_serving_old_results(
    tmp_path, monkeypatch
):
    """The evaluation key covers the class names a named split resolves to, not only its name."""
    from helpers import tiny_clip

    from clip_robust_ext.evaluation import Protocol, evaluate, read_log

    proto = Protocol(
        name="t",
        attacks=[],
        templates="shapes",
        datasets=[{"dataset": "procedural-shapes", "split": "test", "classes": "unseen", "n": 8}],
    )
    model = tiny_clip()
    evaluate(model, proto, tmp_path, label="m", progress=False)
    evaluate(model, proto, tmp_path, label="m", progress=False)
    monkeypatch.setitem(SHAPES_SPLITS, "unseen", ["triangle", "ring", "diamond", "crescent"])
    (rec,) = evaluate(model, proto, tmp_path, label="m", progress=False)
    events = [e["event"] for e in read_log(tmp_path)]
    assert events == ["computed", "skipped", "computed"]
    assert rec["class_split"]["class_names"] == ["triangle", "ring", "diamond", "crescent"]
    assert rec["n_classes"] == 4
