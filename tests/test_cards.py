"""Result cards: the protocol hash pins the exact samples; cost is counted, not estimated."""

from __future__ import annotations

import hashlib
import json

from helpers import tiny_clip

from clip_robust_ext.data import sample_indices
from clip_robust_ext.evaluation import Protocol
from clip_robust_ext.evaluation.cards import card_paths
from clip_robust_ext.run.records import evaluate_loaded


def _card(tmp_path, name: str, loaded=None, **overrides) -> dict:
    settings = {
        "name": "card-test",
        "attacks": [],
        "datasets": [{"dataset": "procedural-shapes", "split": "test"}],
        "n_samples": 6,
        "templates": "shapes",
        "checks": "off",
        **overrides,
    }
    protocol = Protocol(**settings)
    run_dir = tmp_path / name
    evaluate_loaded(loaded or tiny_clip(), protocol, run_dir, "tiny")
    path, md = card_paths(run_dir, "tiny", protocol.name)
    assert md.read_text().startswith("# Result card: tiny")
    return json.loads(path.read_text())


def test_protocol_hash_is_stable_and_changes_with_n_seed_and_class_subset(tmp_path):
    loaded = tiny_clip()
    first = _card(tmp_path, "a", loaded)
    again = _card(tmp_path, "b", loaded)  # another run dir, same protocol and seed
    assert first["protocol"]["hash"] == again["protocol"]["hash"]
    (ds,) = first["protocol"]["content"]["datasets"]
    indices = sample_indices(1000, 6, 0)  # procedural-shapes test split: 1000 images
    text = json.dumps(indices, sort_keys=True, separators=(",", ":"))
    assert ds["indices_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert ds["n"] == 6

    others = {
        "n": _card(tmp_path, "n", loaded, n_samples=7),
        "seed": _card(tmp_path, "seed", loaded, seed=1),
        "classes": _card(
            tmp_path,
            "cls",
            loaded,
            datasets=[{"dataset": "procedural-shapes", "split": "test", "classes": "seen"}],
        ),
    }
    hashes = {k: c["protocol"]["hash"] for k, c in others.items()}
    assert first["protocol"]["hash"] not in hashes.values(), hashes
    assert len(set(hashes.values())) == 3, hashes
    # the seed changes the samples drawn; the class subset changes the classes scored over
    seed_ds = others["seed"]["protocol"]["content"]["datasets"][0]
    assert seed_ds["indices_sha256"] != ds["indices_sha256"]
    assert others["classes"]["protocol"]["content"]["datasets"][0]["classes"] != ds["classes"]


def test_cost_counts_the_forward_and_backward_passes_the_attack_made(tmp_path):
    card = _card(
        tmp_path,
        "pgd",
        attacks=[{"name": "pgd", "label": "pgd-3", "params": {"steps": 3, "alpha": "eps/2"}}],
        eps=["2/255"],
        n_samples=8,
        batch_size=8,
    )
    (row,) = card["results"]["per_dataset"]
    correct = round(row["clean"] * 8 / 100)  # PGD runs on the clean-correct samples only
    cost = card["cost"]
    # one clean pass per sample; per correct sample 3 attack steps (forward + backward each)
    # and one scoring pass of the adversarial image; the determinism probe runs the first 8
    # samples twice (evaluation/randomness.py)
    assert cost["image_forward"] == 8 + 2 * 8 + correct * (3 + 1)
    assert cost["image_backward"] == correct * 3
    assert cost["backward_per_sample"] == round(correct * 3 / 8, 3)
    assert cost["wall_s"] > 0 and cost["cpu_s"] > 0
    assert card["model"]["weights_sha256"] and card["model"]["arch"] == "clipx-tiny"
    assert card["versions"]["torch"]


def test_bad_check_settings_are_one_line_usage_errors(tmp_path):
    from click.testing import CliRunner

    from clip_robust_ext.cli import cli

    for setting, words in (("checks='some'", "checks must be one of"), ("checks_n=0", "checks_n")):
        result = CliRunner().invoke(
            cli,
            ["eval", "--model", "open_clip", "--arch", "clipx-tiny", "--protocol", "pgd"]
            + ["--set", setting, "--run-dir", str(tmp_path / "r")],
        )
        assert result.exit_code == 2, result.output
        assert words in result.output and "Traceback" not in result.output
