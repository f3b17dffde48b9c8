"""`clipx export RUN_DIR/LABEL --hub-folder DIR`: open_clip loads the folder as is (local-dir:)."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from click.testing import CliRunner

from clip_robust_ext.cli import cli
from clip_robust_ext.models import load_clip, read_state_dict

RECIPE = """
[recipe]
name = "tiny-export"
seed = 0

[model]
source = "open_clip"
arch = "clipx-tiny"

[data]
dataset = "procedural-shapes"
split = "train"
n = 8
templates = "shapes"

[defense]
name = "ft-standard"
max_steps = 1
batch_size = 4
lr = 1e-3

[evaluate]
protocol = "clean"
templates = "shapes"
n_samples = 8
datasets = [{ dataset = "procedural-shapes", split = "test" }]
"""


@pytest.mark.slow
def test_export_folder_loads_in_open_clip_with_a_model_card(tmp_path):
    recipe, run_dir = tmp_path / "tiny.toml", tmp_path / "run"
    recipe.write_text(RECIPE)
    ran = CliRunner().invoke(cli, ["recipe", "run", str(recipe), "--run-dir", str(run_dir)])
    assert ran.exit_code == 0, ran.output
    out = tmp_path / "hub" / "ft-standard"
    exported = CliRunner().invoke(
        cli, ["export", str(run_dir / "ft-standard"), "--hub-folder", str(out)]
    )
    assert exported.exit_code == 0, exported.output
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "open_clip_config.json",
        "open_clip_model.safetensors",
    ]

    # open_clip alone, no clipx code: same weights as the run's final.pt
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    trained = read_state_dict(run_dir / "ft-standard" / "final.pt")
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    preprocess_cfg = json.loads((out / "open_clip_config.json").read_text())["preprocess_cfg"]
    again = load_clip(f"local-dir:{out}")  # and clipx reads it back the same way
    assert list(again.mean) == preprocess_cfg["mean"] and list(again.std) == preprocess_cfg["std"]
    assert again.info["checkpoint_format"] == "full"

    card = (out / "README.md").read_text()
    (record,) = [
        r for r in json.loads((run_dir / "results.json").read_text()) if r["label"] == "ft-standard"
    ]
    assert "library_name: open_clip" in card and "procedural-shapes" in card
    assert f"| {record['clean_acc']} |" in card and '"torch"' in card

    refused = CliRunner().invoke(
        cli, ["export", str(run_dir / "ft-standard"), "--hub-folder", str(out)]
    )
    assert refused.exit_code == 2 and "not empty" in refused.stderr
    missing = CliRunner().invoke(
        cli, ["export", str(run_dir / "nope"), "--hub-folder", str(tmp_path / "x")]
    )
    assert missing.exit_code == 2 and "no final.pt" in missing.stderr


CARD_RECIPE = """
[recipe]
name = "tiny-card"
[model]
source = "open_clip"
arch = "clipx-tiny"
[data]
dataset = "procedural-shapes"
split = "train"
classes = "seen"
n = 8
templates = "shapes"
[defense]
name = "tecoa"
eps = "4/255"
alpha = "1/255"
steps = 1
max_steps = 1
batch_size = 4
[[baselines]]
name = "ft-standard"
max_steps = 1
batch_size = 4
[evaluate]
protocol = "pgd"
eps = ["4/255"]
templates = "shapes"
n_samples = 4
datasets = [
  { dataset = "procedural-shapes", split = "test", classes = "unseen" },
  { dataset = "procedural-shapes", split = "test", classes = "seen" },
]
attacks = [
  { name = "pgd", label = "image-pgd", steps = 1, alpha = "eps/4" },
  { name = "fgsm", label = "fgsm" },
]
"""


def _card_table(card: str) -> list[dict[str, str]]:
    rows = [line for line in card.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in rows[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in r.strip("|").split("|")))) for r in rows[1:]]


def _json_block_after(card: str, heading: str) -> dict:
    text = card.split(heading, 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
    return json.loads(text)


@pytest.mark.slow
def test_the_card_of_every_model_of_a_run_matches_its_run_records(tmp_path):
    """Each trained model's card names the defense that trained it (the baseline's own, not the
    recipe's main defense), each view, eps as written and every attack's number."""
    recipe, run_dir = tmp_path / "card.toml", tmp_path / "run"
    recipe.write_text(CARD_RECIPE)
    ran = CliRunner().invoke(cli, ["recipe", "run", str(recipe), "--run-dir", str(run_dir)])
    assert ran.exit_code == 0, ran.output
    resolved = json.loads((run_dir / "recipe.resolved.json").read_text())
    trained = {m["label"]: m["name"] for m in [resolved["defense"], *resolved["baselines"]]}
    assert trained == {"tecoa": "tecoa", "ft-standard": "ft-standard"}
    results = json.loads((run_dir / "results.json").read_text())
    for label, defense in sorted(trained.items()):  # the baseline first
        out = tmp_path / "hub" / label
        exported = CliRunner().invoke(
            cli, ["export", str(run_dir / label), "--hub-folder", str(out)]
        )
        assert exported.exit_code == 0, exported.output
        card = (out / "README.md").read_text()
        training = _json_block_after(card, "## Training")
        assert training["name"] == defense and training["label"] == label, label
        assert f"Defense: **{defense}**" in card
        if defense == "tecoa":
            assert training["params"]["eps"] == "4/255" and training["params"]["alpha"] == "1/255"
        assert "0.0156862745" not in card  # budgets as written, never as floats
        rows = _card_table(card)
        records = [r for r in results if r["label"] == label]
        assert len(rows) == len(records) == 2
        for row, record in zip(rows, records):
            assert row["view"] == record["dataset_params"]["classes"]  # unseen, seen
            assert row["dataset"] == "procedural-shapes" and row["eps"] == "4/255"
            assert row["protocol"] == record["protocol"] == "pgd"
            assert float(row["clean acc"]) == record["clean_acc"]
            assert float(row["robust acc (worst case)"]) == record["robust_acc"]
            for attack in ("image-pgd", "fgsm"):
                assert float(row[attack]) == record["per_attack"][attack], (label, attack)
        assert [row["view"] for row in rows] == ["unseen", "seen"]
