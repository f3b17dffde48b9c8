"""A third-party plugin, pip-installed into the test environment, used from a recipe via the CLI."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from importlib import metadata

import pytest
from click.testing import CliRunner
from helpers import CIFAR10_CLASSES, REPO

from clip_robust_ext.cli import cli
from clip_robust_ext.plugin_manager import reload_plugins

EXAMPLE = REPO / "examples" / "clipx-example-plugin"
DIST = "clipx-example-plugin"

pytestmark = pytest.mark.slow


def _installed() -> bool:
    try:
        metadata.distribution(DIST)
    except metadata.PackageNotFoundError:
        return False
    return True


def _pip(*args: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        pytest.fail(f"pip {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")


@pytest.fixture(scope="module")
def example_plugin():
    """pip install -e the example plugin (no deps); the uninstall at the end leaves the
    environment as it was found."""
    was_installed = _installed()
    if not was_installed:
        # without build isolation when setuptools is here: no download needed
        isolation = (
            [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
        )
        _pip("install", "--no-deps", *isolation, "-q", "-e", str(EXAMPLE))
    importlib.invalidate_caches()
    try:  # an editable install's .pth file is only read at interpreter start-up
        importlib.import_module("clipx_example_plugin")
    except ImportError:
        sys.path.insert(0, str(EXAMPLE))
    reload_plugins()
    yield
    if not was_installed:
        _pip("uninstall", "-y", "-q", DIST)
        if str(EXAMPLE) in sys.path:
            sys.path.remove(str(EXAMPLE))
        sys.modules.pop("clipx_example_plugin", None)
        importlib.invalidate_caches()
        reload_plugins()


def test_plugins_json_lists_the_installed_example_with_its_version(example_plugin):
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    example = rows["example"]
    assert example["distribution"] == DIST and example["version"] == "0.2.0"
    assert example["builtin"] is False and example["errors"] == []
    assert {"register_attacks", "register_defenses", "register_recipes"} <= set(example["hooks"])
    assert rows["builtin"]["builtin"] is True
    attacks = {
        a["name"]: a for a in json.loads(CliRunner().invoke(cli, ["attacks", "--json"]).stdout)
    }
    assert attacks["example-fgsm-rs"]["plugin"] == "example"
    assert attacks["example-fgsm-rs"]["modality"] == "image"
    assert attacks["example-fgsm-rs"]["params"]["restarts"] == 1


def test_example_attack_is_a_real_bounded_attack(example_plugin):
    import torch
    from helpers import cifar10_batch, small_c10

    from clip_robust_ext import ZeroShotClassifier, build_attack, verify_adversarial
    from clip_robust_ext.data.templates import TECOA

    torch.manual_seed(0)
    zs = ZeroShotClassifier(
        small_c10(),
        classnames=CIFAR10_CLASSES,
        templates=list(TECOA),
    )
    x, y = cifar10_batch(32)
    attack = build_attack("example-fgsm-rs", zs, eps="4/255", alpha="5/255", restarts=2)
    x_adv = attack(x, y).images
    verify_adversarial(x, x_adv, 4 / 255, "Linf", "example-fgsm-rs")
    with torch.no_grad():
        clean = (zs(x).argmax(1) == y).float().mean()
        robust = (zs(x_adv).argmax(1) == y).float().mean()
    assert robust < clean  # it does attack


def test_recipe_naming_the_example_attack_runs_end_to_end(example_plugin, tmp_path):
    run_dir = tmp_path / "run"
    args = [
        "recipe",
        "run",
        "example-fast-at",
        "--run-dir",
        str(run_dir),
        "--json",
        "--set",
        "defense.max_steps=4",
        "--set",
        "evaluate.n_samples=32",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    records = doc["records"]
    assert {r["label"] for r in records} == {"clip", "example-fast-at"}
    for r in records:
        assert set(r["per_attack"]) == {"pgd-5", "example-fgsm-rs"}
        assert r["robust_acc"] <= min(r["per_attack"].values()) + 1e-9
        assert r["robust_acc"] <= r["clean_acc"]
    for name in (
        "recipe.resolved.json",
        "recipe.resolved.toml",
        "versions.json",
        "seed",
        "results.json",
        "results.md",
        "results.csv",
        "example-fast-at/final.pt",
    ):
        assert (run_dir / name).is_file(), name
    versions = json.loads((run_dir / "versions.json").read_text())
    assert versions["plugins"]["example"] == f"{DIST} 0.2.0"
    assert "example-fast-at" in (run_dir / "results.md").read_text()
    assert not (run_dir / "run.lock").exists()

    # the same resolved recipe again: nothing is recomputed
    final = run_dir / "example-fast-at" / "final.pt"
    stamp = final.stat().st_mtime_ns
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert final.stat().st_mtime_ns == stamp
    assert "already trained" in again.stderr
    assert json.loads(again.stdout)["records"] == records

    # another recipe on the same run dir is refused, naming what differs
    other = CliRunner().invoke(cli, [*args, "--set", "defense.lr=1e-4"])
    assert other.exit_code == 2 and "defense.train.lr" in other.stderr
