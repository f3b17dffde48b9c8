"""Evaluation protocols and engine: presets, worst-case aggregation, checks, resume, tables."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from helpers import assets, small_c10, tiny_clip

from clip_robust_ext import AdversarialCheckError, ClipxUsageError, hookimpl
from clip_robust_ext.evaluation import (
    Protocol,
    evaluate,
    evaluate_model,
    get_protocol,
    load_records,
    markdown_table,
    protocol_from_dict,
    read_log,
    result_path,
    write_reports,
)
from clip_robust_ext.evaluation.protocols import resolve_budget_expr

C10 = {"dataset": "cifar10-jpegs", "split": "test"}


# -- protocols ----------------------------------------------------------------------------------
def test_presets_encode_the_paper_protocols():
    t = get_protocol("tecoa-16")
    assert t.eps == [1 / 255] and t.norm == "Linf" and t.n_samples is None
    assert t.attacks == [
        {
            "name": "pgd",
            "label": "pgd-100",
            "params": {"steps": 100, "alpha": "1/255", "random_start": True},
        }
    ]
    assert t.templates == ["This is a photo of a {}"] and len(t.datasets) == 16

    aa = get_protocol("autoattack")
    assert aa.attacks[0]["name"] == "autoattack"
    assert aa.attacks[0]["params"]["attacks"] == ["apgd-ce", "apgd-t"]

    fare = get_protocol("fare-aa")
    assert fare.eps == [1 / 255, 2 / 255, 4 / 255] and fare.n_samples == 1000

    mm = get_protocol("mmcoa")
    assert [a["name"] for a in mm.attacks] == ["pgd", "text-attack", "multimodal"]

    pgd = get_protocol("pgd", steps=5, eps="4/255")
    assert pgd.attacks[0]["params"]["steps"] == 5 and pgd.eps == [4 / 255]
    assert resolve_budget_expr(pgd.attacks[0]["params"]["alpha"], 4 / 255) == pytest.approx(
        2.5 * 4 / 255 / 5
    )


def test_protocol_from_recipe_table_and_bad_input():
    p = protocol_from_dict(
        {
            "protocol": "autoattack",
            "eps": ["1/255", "2/255"],
            "n_samples": 50,
            "datasets": [{"dataset": "procedural-shapes", "n": 20}, "cifar10-jpegs"],
        }
    )
    assert p.name == "autoattack" and p.eps == [1 / 255, 2 / 255] and p.n_samples == 50
    assert p.datasets[0] == {"dataset": "procedural-shapes", "n": 20, "split": "test"}
    assert p.n_for(p.datasets[0]) == 20 and p.n_for(p.datasets[1]) == 50

    with pytest.raises(ClipxUsageError, match="did you mean 'n_samples'"):
        get_protocol("pgd", n_sample=10)
    with pytest.raises(ClipxUsageError, match="distinct 'label'"):
        Protocol(attacks=["pgd", "pgd"])
    with pytest.raises(ClipxUsageError, match="protocol's eps list"):
        Protocol(attacks=[{"name": "pgd", "eps": "4/255"}])
    with pytest.raises(ClipxUsageError, match="outside"):
        Protocol(eps=["300/255"])
    with pytest.raises(ClipxUsageError, match="did you mean 'autoattack'"):
        get_protocol("autoatack")
    with pytest.raises(ClipxUsageError):
        resolve_budget_expr("eps**2", 0.1)


def test_dataset_hash_ignores_other_datasets_but_not_settings():
    base = Protocol(attacks=["pgd"], datasets=["a", "b"])
    spec = base.datasets[0]
    assert base.dataset_hash(spec) == base.with_overrides(datasets=["a", "c"]).dataset_hash(spec)
    assert base.dataset_hash(spec) != base.with_overrides(eps=["2/255"]).dataset_hash(spec)
    assert base.dataset_hash(spec) != base.with_overrides(seed=1).dataset_hash(spec)


# -- throwaway attacks for the checks -------------------------------------------------------------
class _OverEps:
    def __init__(self, model, eps):
        self.eps = eps

    def __call__(self, x, y):
        return (x + 2 * self.eps).clamp(0, 1)


class _TrainMode:
    def __init__(self, model, eps):
        self.model, self.eps = model, eps

    def __call__(self, x, y):
        self.model.train()
        return x.clone()


class _SwapPrompts:
    """A real (if crude) text attack: class c is described by class c+1's prompts."""

    def __init__(self, model, move_images=False):
        self.model, self.move = model, move_images

    def __call__(self, x, y):
        prompts = self.model.prompts[1:] + self.model.prompts[:1]
        return (x + 0.001 if self.move else x), self.model.with_prompts(prompts)


class _SignNoiseAndPrompts:
    """Multimodal: images moved to a corner of the eps ball, scored with rotated prompts."""

    def __init__(self, model, eps, scale=1.0):
        self.model, self.step = model, eps * scale

    def __call__(self, x, y):
        noise = torch.sign(torch.randn_like(x))  # the engine seeds every batch
        prompts = self.model.prompts[1:] + self.model.prompts[:1]
        return (x + self.step * noise).clamp(0, 1), self.model.with_prompts(prompts)


@pytest.fixture
def test_attacks(register_plugin):
    def register_attacks(register):
        register("over-eps", _OverEps, modality="image")
        register("train-mode", _TrainMode, modality="image")
        register("swap-prompts", _SwapPrompts, modality="text")
        register("sign-mm", _SignNoiseAndPrompts, modality="multimodal")

    return register_plugin(
        SimpleNamespace(register_attacks=hookimpl(register_attacks)), "eval-test-attacks"
    )


def _proto(**kw):
    base = dict(name="t", datasets=[{**C10, "n": 24}], batch_size=8, templates="tecoa")
    base.update(kw)
    return Protocol(**base)


# -- engine ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def c10():
    assets()
    return small_c10()


def test_worst_case_per_attack_and_files(c10, tmp_path, test_attacks):
    proto = _proto(
        attacks=[
            {"name": "pgd", "label": "pgd-2", "params": {"steps": 2, "alpha": "eps/2"}},
            {"name": "swap-prompts", "label": "swap"},
            {"name": "sign-mm", "label": "mm"},
        ],
        eps=["1/255", "8/255"],
    )
    recs = evaluate(c10, proto, tmp_path, label="c10", progress=False)
    assert [r["eps_str"] for r in recs] == ["1/255", "8/255"]
    data = json.loads(result_path(tmp_path, "c10", "t", "cifar10-jpegs_test").read_text())
    s = data["samples"]
    assert len(s["indices"]) == 24
    assert set(s["attacks"]) == {"pgd-2@1/255", "pgd-2@8/255", "swap", "mm@1/255", "mm@8/255"}
    clean = [c == "1" for c in s["clean"]]
    for rec in recs:
        pgd = [c == "1" for c in s["attacks"][f"pgd-2@{rec['eps_str']}"]]
        swap = [c == "1" for c in s["attacks"]["swap"]]
        mm = [c == "1" for c in s["attacks"][f"mm@{rec['eps_str']}"]]
        robust = [c and p and w and m for c, p, w, m in zip(clean, pgd, swap, mm)]
        assert rec["clean_acc"] == pytest.approx(100 * sum(clean) / 24)
        assert rec["per_attack"]["pgd-2"] == pytest.approx(
            100 * sum(c and p for c, p in zip(clean, pgd)) / 24
        )
        assert rec["robust_acc"] == pytest.approx(100 * sum(robust) / 24)
        assert rec["units"] == "percent" and rec["attack"] == "pgd-2+swap+mm"
        assert {"versions", "seed", "templates", "protocol_params", "elapsed_s", "formulas"} <= set(
            rec
        )
        # rotated prompts: every clean-correct image is misread, with or without image noise
        assert rec["per_attack"]["swap"] == 0.0 and rec["per_attack"]["mm"] == 0.0
        assert [a["eps"] for a in rec["attacks"]] == [rec["eps"], None, rec["eps"]]
    assert recs[0]["clean_acc"] > 30
    assert recs[1]["per_attack"]["pgd-2"] <= recs[0]["per_attack"]["pgd-2"]


def test_results_do_not_depend_on_attack_or_dataset_order(c10, tmp_path):
    a = {"name": "pgd", "label": "pgd-2", "params": {"steps": 2, "alpha": "eps/2"}}
    b = {"name": "fgsm", "label": "fgsm"}
    shapes = {"dataset": "procedural-shapes", "n": 16}
    one = _proto(attacks=[a, b], datasets=[{**C10, "n": 16}, shapes])
    two = _proto(attacks=[b, a], datasets=[shapes, {**C10, "n": 16}])
    evaluate(c10, one, tmp_path / "1", label="m", progress=False)
    evaluate(c10, two, tmp_path / "2", label="m", progress=False)
    for key in ("cifar10-jpegs_test", "procedural-shapes_test"):
        s1 = json.loads(result_path(tmp_path / "1", "m", "t", key).read_text())["samples"]
        s2 = json.loads(result_path(tmp_path / "2", "m", "t", key).read_text())["samples"]
        assert s1 == s2


def test_violations_are_errors(c10, tmp_path, test_attacks):
    with pytest.raises(AdversarialCheckError, match="exceeds eps"):
        evaluate(c10, _proto(attacks=["over-eps"]), tmp_path / "a", progress=False)
    with pytest.raises(AdversarialCheckError, match="train mode"):
        evaluate(c10, _proto(attacks=["train-mode"]), tmp_path / "b", progress=False)
    with pytest.raises(AdversarialCheckError, match="exceeds eps"):
        proto = _proto(attacks=[{"name": "sign-mm", "scale": 3}])
        evaluate(c10, proto, tmp_path / "d", progress=False)
    with pytest.raises(AdversarialCheckError, match="text attack changed the images"):
        evaluate(
            c10,
            _proto(attacks=[{"name": "swap-prompts", "move_images": True}]),
            tmp_path / "c",
            progress=False,
        )
    assert not list((tmp_path).rglob("cifar10-jpegs_test.json"))  # nothing counted


def test_fp32_is_enforced_unless_asked(tmp_path):
    loaded = tiny_clip()
    loaded.model.to(torch.bfloat16)
    proto = Protocol(
        name="t",
        attacks=["fgsm"],
        datasets=[{"dataset": "procedural-shapes", "n": 8}],
        templates="shapes",
        batch_size=8,
    )
    with pytest.raises(ClipxUsageError, match="fp32"):
        evaluate(loaded, proto, tmp_path, progress=False)


def test_resume_skips_finished_datasets_and_adds_new_ones(tmp_path):
    loaded = tiny_clip()
    ds = [{"dataset": "procedural-shapes", "n": 8, "seed": s} for s in (1, 2, 3)]
    proto = Protocol(
        name="t",
        attacks=[{"name": "pgd", "params": {"steps": 1}}],
        datasets=ds[:2],
        templates="shapes",
        batch_size=8,
    )
    first = evaluate(loaded, proto, tmp_path, label="m", progress=False)
    again = evaluate(loaded, proto.with_overrides(datasets=ds), tmp_path, label="m", progress=False)
    assert again[:2] == first
    events = [(e["event"], e["dataset"]) for e in read_log(tmp_path)]
    computed = [d for e, d in events if e == "computed"]
    assert len(computed) == 3 and len(set(computed)) == 3
    assert [e for e, _ in events[2:]] == ["skipped", "skipped", "computed"]
    # another eps: every dataset is recomputed (the old files no longer match)
    evaluate(loaded, proto.with_overrides(eps=["2/255"]), tmp_path, label="m", progress=False)
    assert [e["event"] for e in read_log(tmp_path)][-2:] == ["computed", "computed"]
    # changed weights: recomputed too
    with torch.no_grad():
        next(loaded.model.parameters()).add_(0.01)
    evaluate(loaded, proto.with_overrides(eps=["2/255"]), tmp_path, label="m", progress=False)
    assert [e["event"] for e in read_log(tmp_path)][-2:] == ["computed", "computed"]


class _FailOnce:
    """PGD that crashes once at the third batch: an interrupted evaluation."""

    calls = 0

    def __init__(self, model, eps):
        from clip_robust_ext.attacks import build_attack

        self.inner = build_attack("pgd", model, eps=eps, steps=2, alpha=eps / 2)

    def __call__(self, x, y):
        _FailOnce.calls += 1
        if _FailOnce.calls == 3:
            raise KeyboardInterrupt
        return self.inner(x, y).images


def test_interrupted_dataset_resumes_from_finished_batches(c10, tmp_path, register_plugin):
    def register_attacks(register):
        register("fail-once", _FailOnce, modality="image")

    register_plugin(SimpleNamespace(register_attacks=hookimpl(register_attacks)), "eval-fail-once")
    proto = _proto(attacks=["fail-once"], datasets=[{**C10, "n": 40}])
    _FailOnce.calls = 0
    with pytest.raises(KeyboardInterrupt):
        evaluate(c10, proto, tmp_path / "cut", label="m", progress=False, checkpoint_s=0)
    final = result_path(tmp_path / "cut", "m", "t", "cifar10-jpegs_test")
    assert not final.exists() and list(final.parent.glob("*.partial.*"))
    calls_before = _FailOnce.calls
    evaluate(c10, proto, tmp_path / "cut", label="m", progress=False)
    assert _FailOnce.calls - calls_before == 3  # 5 batches, 2 finished before the crash
    assert [e["event"] for e in read_log(tmp_path / "cut")] == ["resumed", "computed"]
    assert not list(final.parent.glob("*.partial.*"))
    evaluate(c10, proto, tmp_path / "full", label="m", progress=False)
    cut = json.loads(final.read_text())
    full = json.loads(result_path(tmp_path / "full", "m", "t", "cifar10-jpegs_test").read_text())
    assert (
        cut["samples"] == full["samples"]
        and cut["records"][0]["robust_acc"] == full["records"][0]["robust_acc"]
    )


def test_evaluate_model_for_training_loops(c10, tmp_path):
    from clip_robust_ext.evaluation import build_classifier, open_eval_dataset

    ds = open_eval_dataset(C10)
    zs = build_classifier(c10, ds.classnames, "tecoa").train()
    out = evaluate_model(
        zs,
        ds,
        _proto(attacks=[{"name": "pgd", "params": {"steps": 2}}], n_samples=16),
        indices=list(range(16)),
    )
    assert len(out) == 1 and out[0]["n"] == 16 and 0 <= out[0]["robust_acc"] <= out[0]["clean_acc"]
    assert zs.training  # mode restored
    assert not list(tmp_path.iterdir())


# -- tables --------------------------------------------------------------------------------------
def _rec(label, ds, eps, clean, robust):
    return {
        "protocol": "p",
        "label": label,
        "dataset": ds,
        "dataset_key": ds,
        "eps": eps,
        "eps_str": f"{round(eps * 255)}/255",
        "norm": "Linf",
        "n": 10,
        "seed": 0,
        "attack": "pgd",
        "clean_acc": clean,
        "robust_acc": robust,
    }


def test_tables_and_plot(tmp_path):
    recs = [
        _rec("clip", "a", 1 / 255, 80.0, 10.0),
        _rec("clip", "b", 1 / 255, 60.0, 20.0),
        _rec("tecoa", "a", 1 / 255, 70.0, 40.0),
    ]
    md = markdown_table(recs)
    assert "| model | a clean | a robust | b clean | b robust | avg clean | avg robust |" in md
    assert "| clip | 80.00 | 10.00 | 60.00 | 20.00 | 70.00 | 15.00 |" in md
    assert "| tecoa | 70.00 | 40.00 |  |  |  |  |" in md  # missing dataset: no average
    paths = write_reports(tmp_path, recs)
    assert "plot" not in paths  # one eps: no sweep plot
    csv_lines = paths["csv"].read_text().splitlines()
    assert csv_lines[0].startswith("protocol,model,a clean") and csv_lines[1].startswith(
        "p,clip,80.0000"
    )
    sweep = recs + [_rec("clip", "a", 4 / 255, 80.0, 1.0), _rec("clip", "b", 4 / 255, 60.0, 0.0)]
    paths = write_reports(tmp_path, sweep)
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    assert "a robust@4/255" in paths["markdown"].read_text()


def test_load_records_reads_finished_results(tmp_path):
    loaded = tiny_clip()
    proto = Protocol(
        name="t",
        attacks=[],
        datasets=[{"dataset": "procedural-shapes", "n": 8}],
        templates="shapes",
        batch_size=8,
    )
    recs = evaluate(loaded, proto, tmp_path, label="clean-only", progress=False)
    assert recs[0]["robust_acc"] is None and recs[0]["attack"] == "clean"
    assert load_records(tmp_path) == recs


def test_cascade_gives_the_same_worst_case_with_fewer_attacked_samples(c10, tmp_path):
    """Deterministic attacks (FGSM, then PGD without random start): each later attack only sees
    the survivors, the worst case is unchanged, per-attack numbers become cumulative."""
    attacks = [
        {"name": "fgsm", "label": "fgsm"},
        {
            "name": "pgd",
            "label": "pgd-5",
            "params": {"steps": 5, "alpha": "eps/4", "random_start": False},
        },
    ]
    calls: list[int] = []
    # early_exit off: the counter below wraps torchattacks.PGD (the full-length path)
    plain = _proto(attacks=attacks, eps=["2/255"], datasets=[{**C10, "n": 48}], early_exit=False)
    cascade = plain.with_overrides(cascade=True)
    assert plain.dataset_hash(plain.datasets[0]) != cascade.dataset_hash(cascade.datasets[0])
    import torchattacks

    original = torchattacks.PGD.forward

    def counting(self, images, labels):
        calls.append(len(images))
        return original(self, images, labels)

    torchattacks.PGD.forward = counting
    try:
        (a,) = evaluate(c10, plain, tmp_path / "plain", label="m", progress=False)
        attacked_plain = sum(calls)
        calls.clear()
        (b,) = evaluate(c10, cascade, tmp_path / "cascade", label="m", progress=False)
        attacked_cascade = sum(calls)
    finally:
        torchattacks.PGD.forward = original
    assert a["clean_acc"] == b["clean_acc"]
    assert abs(a["robust_acc"] - b["robust_acc"]) <= 100 / 48 + 1e-9  # float ties at most 1 sample
    assert b["per_attack"]["pgd-5"] == b["robust_acc"]  # cumulative: the last one is the worst case
    assert b["per_attack"]["fgsm"] == a["per_attack"]["fgsm"]
    assert attacked_cascade < attacked_plain  # PGD ran only on the FGSM survivors
    assert b["protocol_params"]["cascade"] is True
