"""The `certify` protocol on the pre-trained small CLIP: certified vs empirical per view, the
per-sample radii on disk, the card's certified section and its check (planted violation)."""

from __future__ import annotations

import copy
import csv
import io

import pytest
from scipy.stats import beta, norm

from clip_robust_ext.api import CertifyProtocol, ClipxUsageError, procedural_small
from clip_robust_ext.evaluation import records as R
from clip_robust_ext.evaluation.cards import card_markdown, evaluate_with_card
from clip_robust_ext.evaluation.certified_card import add_certified
from clip_robust_ext.evaluation.engine import evaluate
from clip_robust_ext.evaluation.protocols import get_protocol
from clip_robust_ext.evaluation.tables import write_reports

VIEWS = [
    {"dataset": "procedural-shapes", "split": "test", "classes": "unseen"},
    {"dataset": "procedural-shapes", "split": "test", "classes": "seen"},
]


def small_protocol(**overrides) -> CertifyProtocol:
    settings = dict(
        datasets=VIEWS,
        templates="shapes",
        n_samples=6,
        sigma=0.25,
        n0=10,
        n_draws=60,
        eps=[0.0, 0.25, 0.5],
        attack_steps=3,
        eot_draws=2,
        noise_batch=60,
    )
    return get_protocol("certify", **{**settings, **overrides})


def test_preset_is_registered_on_the_transfer_views_in_l2():
    proto = get_protocol("certify")
    assert isinstance(proto, CertifyProtocol) and proto.norm == "L2"
    assert [d.get("classes") for d in proto.datasets] == ["unseen", "unseen", "seen"]
    assert proto.eps == [0.0, 0.25, 0.5, 1.0] and proto.attacks == []


@pytest.mark.parametrize(
    "overrides, message",
    [({"norm": "Linf"}, "L2"), ({"attacks": ["pgd"]}, "attacks must be empty"), ({"n0": 0}, "n0")],
)
def test_bad_settings_are_usage_errors(overrides, message):
    with pytest.raises(ClipxUsageError, match=message):
        small_protocol(**overrides)


@pytest.fixture(scope="module")
def certified_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("certify")
    loaded = procedural_small(progress=False)
    proto = small_protocol()
    records, card = evaluate_with_card(
        loaded, proto, run_dir, "start", lambda: evaluate(loaded, proto, run_dir, "start")
    )
    return loaded, proto, run_dir, records, card


def test_records_per_view_and_radius_bound_the_attack(certified_run):
    _, _, _, records, _ = certified_run
    assert [(r["dataset_key"], r["eps"]) for r in records] == [
        (key, r)
        for key in ("procedural-shapes_test_unseen", "procedural-shapes_test_seen")
        for r in (0.0, 0.25, 0.5)
    ]
    for r in records:
        assert r["kind"] == "certified" and r["n"] == 6
        assert r["certified_acc"] <= r["clean_acc"] and 0 <= r["abstain_rate"] <= 100
        assert r["empirical_acc"] >= r["certified_acc"]
        # 70 noisy forwards per image against one plain forward: certification costs far more
        assert r["cost_ratio"] > 10
    by_view = [records[:3], records[3:]]
    for view in by_view:
        assert [r["certified_acc"] for r in view] == sorted(
            (r["certified_acc"] for r in view), reverse=True
        )
    assert any(r["clean_acc"] > 0 for r in records)  # the model is not a constant classifier


def test_per_sample_radii_are_stored_and_follow_the_formula(certified_run):
    loaded, proto, run_dir, _, _ = certified_run
    saved = R.read_json(R.result_path(run_dir, "start", "certify", "procedural-shapes_test_unseen"))
    certs = saved["samples"]["certificates"]
    assert len(certs) == len(saved["samples"]["indices"]) == 6
    for c in certs:
        if c["label"] == -1:
            assert c["radius"] == 0.0
            continue
        p = beta.ppf(0.001, c["count"], 60 - c["count"] + 1)
        assert c["radius"] == pytest.approx(0.25 * norm.ppf(p), rel=1e-9)
    again = evaluate(loaded, proto, run_dir, "start")  # same settings and weights: reused
    assert again[:3] == saved["records"]


def test_card_shows_certified_apart_from_empirical_and_the_check_passes(certified_run):
    _, _, _, _, card = certified_run
    assert len(card["certified"]) == 6
    assert card["protocol"]["content"]["settings"]["sigma"] == 0.25
    check = {c["name"]: c for c in card["checks"]["results"]}["certified_le_empirical"]
    assert check["status"] == "pass"
    page = card_markdown(card)
    assert "## Certified (randomized smoothing" in page and "empirical PGD-L2" in page


def test_card_check_fires_on_a_planted_violation(certified_run):
    _, _, _, records, card = certified_run
    planted = copy.deepcopy(records)
    target = max(planted, key=lambda r: r["certified_acc"])
    target["empirical_acc"] = target["certified_acc"] - 10.0
    out = add_certified({"checks": {"results": [], "failed": []}}, planted)
    check = out["checks"]["results"][0]
    assert check["status"] == "fail" and out["checks"]["failed"] == ["certified_le_empirical"]
    assert target["dataset_key"] in check["detail"]


def test_same_seed_reproduces_the_certificates(certified_run, tmp_path):
    loaded, proto, _, records, _ = certified_run
    timing = ("elapsed_s", "cost_ratio")  # measured, not computed: they may differ

    def numbers(recs):
        return [{k: v for k, v in r.items() if k not in timing} for r in recs]

    fresh = evaluate(loaded, proto, tmp_path, "start", resume=False)
    assert numbers(fresh) == numbers(records)


def test_run_tables_list_certified_rows_apart(certified_run, tmp_path):
    _, _, _, records, _ = certified_run
    paths = write_reports(tmp_path, records)
    page = paths["markdown"].read_text()
    assert "(certified: randomized smoothing)" in page
    assert page.count("| start | procedural-shapes_test_") == 6
    rows = list(csv.reader(io.StringIO(paths["csv"].read_text())))
    assert len(rows) == 6 and rows[0][:3] == ["certify", "start", "procedural-shapes_test_unseen"]
    assert float(rows[0][6]) == records[0]["certified_acc"]


def test_stored_views_are_not_served_to_other_smoothing_settings(certified_run):
    """The result store's key covers sigma and the draws: the same run dir and label with another
    sigma recomputes (and a repeat of the first settings reuses the stored records)."""
    loaded, proto, run_dir, records, _ = certified_run
    again = evaluate(loaded, proto, run_dir, "start")
    assert [r.get("elapsed_s") for r in again] == [r.get("elapsed_s") for r in records]
    other = evaluate(loaded, small_protocol(sigma=0.5), run_dir, "start")
    assert {r["sigma"] for r in other if "sigma" in r} <= {0.5}
    assert [r.get("elapsed_s") for r in other] != [r.get("elapsed_s") for r in records]
