"""Issue 23 class E: names two third-party plugins share, qualified names, provenance in records,
CLIPX_LOAD_PLUGINS exclusions, and broken distribution metadata."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from click.testing import CliRunner

from clip_robust_ext.api import ClipxUsageError, get, hookimpl, names
from clip_robust_ext.cli import cli
from clip_robust_ext.plugin_manager import UNNAMED, plugin_info, reload_plugins
from clip_robust_ext.registry import entries

PLUGIN = """
from clip_robust_ext import hookimpl


def shift(model, eps: float = {amount}):
    def attack(images, labels):  # a real, bounded perturbation: +eps on every pixel
        return (images + eps).clamp(0, 1)

    attack.eps, attack.norm = eps, "Linf"
    return attack


@hookimpl
def register_attacks(register):
    register("{shared}", shift, modality="image", description="{dist}")
    register("{dist}-only", shift, modality="image")
"""


def _distribution(root, dist: str, module: str, metadata: str, amount: float) -> None:
    shared = "shared-shift" if dist != "nameless" else "nameless-shift"
    (root / f"{module}.py").write_text(PLUGIN.format(amount=amount, dist=dist, shared=shared))
    info = root / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(metadata)
    (info / "entry_points.txt").write_text(f"[clipx]\n{dist} = {module}\n")


@pytest.fixture
def two_plugins(tmp_path, monkeypatch):
    """alpha and beta both register 'shared-shift'; nameless has no Name in its metadata."""
    for dist, amount in (("alpha", 1 / 255), ("beta", 2 / 255)):
        meta = f"Metadata-Version: 2.1\nName: clipx-{dist}\nVersion: 1.0\n"
        _distribution(tmp_path, dist, f"clipx_tmp_{dist}", meta, amount)
    _distribution(
        tmp_path, "nameless", "clipx_tmp_nameless", "Metadata-Version: 2.1\nVersion: 3.0\n", 0.0
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reload_plugins()
    yield tmp_path
    monkeypatch.undo()
    for dist in ("alpha", "beta", "nameless"):
        sys.modules.pop(f"clipx_tmp_{dist}", None)
    reload_plugins()


def test_a_name_two_plugins_register_is_an_error_naming_both(two_plugins):
    with pytest.raises(ClipxUsageError) as err:
        get("attacks", "shared-shift")
    message = str(err.value)
    assert "'alpha'" in message and "'beta'" in message
    assert "'alpha:shared-shift'" in message and "'beta:shared-shift'" in message
    assert get("attacks", "alpha:shared-shift").description == "alpha"
    assert get("attacks", "beta:shared-shift").description == "beta"
    assert get("attacks", "alpha-only").plugin == "alpha"  # unshared names stay plain
    assert "shared-shift" not in names("attacks") and "alpha:shared-shift" in names("attacks")
    assert get("attacks", "builtin:pgd") is get("attacks", "pgd")


def test_a_builtin_name_stays_builtin_and_the_other_is_reachable_qualified(register_plugin):
    class Impostor:
        @hookimpl
        def register_attacks(self, register):
            register("pgd", lambda model, **p: None, modality="image", description="impostor")

    register_plugin(Impostor(), "impostor")
    assert get("attacks", "pgd").plugin == "builtin"
    assert get("attacks", "impostor:pgd").description == "impostor"
    with pytest.raises(ClipxUsageError, match="no plugin 'nosuch'"):
        get("attacks", "nosuch:pgd")


def _recipe(tmp_path, attack: str):
    path = tmp_path / "shared.toml"
    path.write_text(
        textwrap.dedent(f"""
        [recipe]
        name = "shared"
        [model]
        source = "open_clip"
        arch = "clipx-tiny"
        [evaluate]
        protocol = "clean"
        eps = ["2/255"]
        n_samples = 4
        datasets = [{{ dataset = "procedural-shapes", n = 4 }}]
        attacks = ["{attack}"]
        """)
    )
    return path


def test_recipes_take_qualified_names_and_refuse_the_shared_one(two_plugins, tmp_path):
    shared = CliRunner().invoke(cli, ["recipe", "show", str(_recipe(tmp_path, "shared-shift"))])
    assert shared.exit_code == 2
    assert "evaluate.attacks.0: attack 'shared-shift' is registered by plugins" in shared.output
    assert "'alpha:shared-shift'" in shared.output and "'beta:shared-shift'" in shared.output
    qualified = CliRunner().invoke(
        cli, ["recipe", "show", "--json", str(_recipe(tmp_path, "beta:shared-shift"))]
    )
    assert qualified.exit_code == 0, qualified.output
    doc = json.loads(qualified.stdout)
    assert doc["evaluate"]["attacks"] == ["beta:shared-shift"]


def test_every_component_in_a_record_names_its_plugin(two_plugins, tmp_path):
    result = CliRunner().invoke(
        cli,
        ["recipe", "run", str(_recipe(tmp_path, "beta:shared-shift")), "--run-dir",
         str(tmp_path / "run")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (record,) = json.loads((tmp_path / "run" / "results.json").read_text())
    parts = record["components"]
    assert parts["attacks"] == [
        {"name": "shared-shift", "plugin": "beta", "distribution": "clipx-beta 1.0"}
    ]
    builtin = get("models", "open_clip").provenance["distribution"]
    assert builtin.startswith("clip-robust-ext ")
    assert parts["model"] == {"name": "open_clip", "plugin": "builtin", "distribution": builtin}
    assert parts["dataset"]["plugin"] == "builtin" and parts["protocol"]["name"] == "clean"


def test_a_distribution_without_a_name_does_not_break_loading(two_plugins):
    info = {p["name"]: p for p in plugin_info()}
    assert info["nameless"]["distribution"] == UNNAMED and info["nameless"]["version"] == "3.0"
    assert "nameless-only" in names("attacks")
    assert CliRunner().invoke(cli, ["--help"]).exit_code == 0


def test_load_plugins_exclusions_and_unknown_names(two_plugins, monkeypatch, capsys):
    monkeypatch.setenv("CLIPX_LOAD_PLUGINS", "-beta,-nosuch-plugin")
    reload_plugins()
    loaded = {p["name"] for p in plugin_info()}
    assert {"builtin", "alpha", "nameless"} <= loaded and "beta" not in loaded
    assert get("attacks", "shared-shift").plugin == "alpha"  # no longer shared
    err = capsys.readouterr().err
    assert "CLIPX_LOAD_PLUGINS names 'nosuch-plugin'" in err
    monkeypatch.setenv("CLIPX_LOAD_PLUGINS", "alpha,clipx-beta,-alpha")  # by distribution name too
    reload_plugins()
    loaded = {p["name"] for p in plugin_info()}
    assert "beta" in loaded and "alpha" not in loaded and "nameless" not in loaded
    assert "builtin" in loaded  # built-ins cannot be excluded


def test_registries_are_cached_until_a_plugin_registers(register_plugin):
    first = entries("attacks")
    assert entries("attacks") is first

    class Late:
        @hookimpl
        def register_attacks(self):  # an implementation may take a subset of the arguments
            pass

        @hookimpl
        def register_datasets(self, register):
            register("late-data", lambda **p: [])

    register_plugin(Late(), "late")
    assert entries("attacks") is not first  # rebuilt after the registration
    assert "late-data" in names("datasets")
