"""The plugin's own tests: run with `pytest examples/clipx-example-plugin/tests` once installed."""

import json

import torch
from click.testing import CliRunner

from clip_robust_ext import ZeroShotClassifier, build_attack, get, load_clip, verify_adversarial
from clip_robust_ext.cli import cli


def test_registered_under_the_plugin_name():
    assert get("attacks", "example-fgsm-rs").plugin == "example"
    assert get("attacks", "example-fgsm-rs").modality == "image"
    assert get("defenses", "example-fast-at").plugin == "example"
    assert get("recipes", "example-fast-at").obj.is_file()


def test_listed_by_clipx_plugins():
    rows = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).stdout)["plugins"]
    mine = [r for r in rows if r["name"] == "example"]
    assert mine and mine[0]["version"] == "0.2.0" and not mine[0]["errors"]


def test_attack_stays_in_the_ball():
    torch.manual_seed(0)
    zs = ZeroShotClassifier(load_clip("clipx-tiny"), classnames=["cat", "dog"], templates=["a {}"])
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    x_adv = build_attack("example-fgsm-rs", zs, eps="2/255", restarts=3)(x, y).images
    verify_adversarial(x, x_adv, 2 / 255, "Linf", "example-fgsm-rs")
    assert not torch.equal(x, x_adv)
