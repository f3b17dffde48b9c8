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
