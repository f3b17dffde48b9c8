"""Plugin manager and registries: built-ins as entry points, throwaway plugins, broken plugins."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from clip_robust_ext import ClipxUsageError, hookimpl
from clip_robust_ext.plugin_manager import load_errors, plugin_info, pm, reload_plugins
from clip_robust_ext.registry import entries, get, names, registry_errors


def test_builtin_plugin_is_an_entry_point_of_the_main_distribution():
    info = {p["name"]: p for p in plugin_info()}
    builtin = info["builtin"]
    assert builtin["distribution"] == "clip-robust-ext"
    assert builtin["version"] and builtin["builtin"] is True
    assert {"register_attacks", "register_models", "register_recipes"} <= set(builtin["hooks"])
    assert get("attacks", "pgd").plugin == "builtin"
    assert get("attacks", "pgd").modality == "image"
    assert "tecoa" in names("templates")


class _Throwaway:
    @hookimpl
    def register_attacks(self, register):
        register("throwaway-noise", lambda model, **p: None, modality="image", description="test")

    @hookimpl
    def register_datasets(self, register):
        register("throwaway-data", lambda **p: [], description="test")


def test_throwaway_plugin_registers_and_unregisters(register_plugin):
    register_plugin(_Throwaway(), "throwaway")
    entry = get("attacks", "throwaway-noise")
    assert entry.plugin == "throwaway" and entry.description == "test"
    assert "throwaway-data" in names("datasets")
    pm.unregister(name="throwaway")
    assert "throwaway-noise" not in names("attacks")


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ClipxUsageError, match=r"unknown attack 'pgdd' \(did you mean 'pgd'\?\)"):
        get("attacks", "pgdd")


def test_a_hook_that_raises_is_reported_and_the_others_still_work(register_plugin):
    class Raises:
        @hookimpl
        def register_attacks(self, register):
            register("never-seen", object, modality="image")
            raise RuntimeError("boom in register_attacks")

    register_plugin(Raises(), "raiser")
    attacks = entries("attacks")
    assert "pgd" in attacks and "never-seen" not in attacks
    errors = [e for e in registry_errors if e["plugin"] == "raiser"]
    assert errors and "RuntimeError: boom in register_attacks" in errors[0]["error"]


def test_duplicate_names_keep_the_first_and_report_the_second(register_plugin):
    class Dupe:
        @hookimpl
        def register_attacks(self, register):
            register("pgd", object, modality="image", description="impostor")

    register_plugin(Dupe(), "dupe")
    assert get("attacks", "pgd").plugin == "builtin"
    assert any(
        e["plugin"] == "dupe" and "already registered by 'builtin'" in e["error"]
        for e in registry_errors
    )


def test_bad_modality_is_a_registry_error(register_plugin):
    class BadModality:
        @hookimpl
        def register_attacks(self, register):
            register("odd", object, modality="audio")

    register_plugin(BadModality(), "badmod")
    assert "odd" not in names("attacks")
    assert any(e["plugin"] == "badmod" and "modality" in e["error"] for e in registry_errors)


@pytest.fixture
def fake_distributions(tmp_path, monkeypatch):
    """Two installed distributions on sys.path: one whose entry point imports, one that fails."""
    good = tmp_path / "clipx_tmp_good.py"
    good.write_text(
        textwrap.dedent("""
        from clip_robust_ext import hookimpl

        @hookimpl
        def register_templates(register):
            register("tmp-good-templates", ["a {} from a temp plugin"])

        @hookimpl
        def register_atacks(register):  # misspelt hook: reported, not silently ignored
            pass
    """)
    )
    for dist, version, target in (
        ("clipx-tmp-good", "1.2.3", "clipx_tmp_good"),
        ("clipx-tmp-broken", "0.0.1", "clipx_tmp_missing_module"),
    ):
        info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[clipx]\n{dist.split('-')[-1]} = {target}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reload_plugins()
    yield tmp_path
    monkeypatch.undo()
    sys.modules.pop("clipx_tmp_good", None)
    reload_plugins()


def test_entry_point_that_fails_to_import_is_reported_others_load(fake_distributions):
    by_name = {e.name: e for e in load_errors}
    assert "broken" in by_name
    assert by_name["broken"].distribution == "clipx-tmp-broken"
    assert "ModuleNotFoundError" in by_name["broken"].error
    info = {p["name"]: p for p in plugin_info()}
    assert info["good"]["version"] == "1.2.3" and info["good"]["distribution"] == "clipx-tmp-good"
    assert "builtin" in info and "broken" not in info
    assert "tmp-good-templates" in names("templates") and "pgd" in names("attacks")
    assert any(
        e.name == "good"
        and "unknown hook 'register_atacks'" in e.error
        and "register_attacks" in e.error
        for e in load_errors
    )


def test_cli_plugins_json_lists_the_broken_plugin_with_its_error(fake_distributions):
    from click.testing import CliRunner

    from clip_robust_ext.cli import cli

    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    rows = {p["name"]: p for p in doc["plugins"]}
    assert rows["broken"]["loaded"] is False
    assert "ModuleNotFoundError" in rows["broken"]["errors"][0]
    assert rows["good"]["loaded"] is True and rows["good"]["version"] == "1.2.3"
    assert rows["builtin"]["loaded"] is True and rows["builtin"]["builtin"] is True
    assert any(e["name"] == "broken" for e in doc["load_errors"])


def test_clipx_load_plugins_selects_external_plugins(fake_distributions, monkeypatch):
    monkeypatch.setenv("CLIPX_LOAD_PLUGINS", "")
    reload_plugins()
    loaded = {p["name"] for p in plugin_info()}
    assert "builtin" in loaded and "good" not in loaded
    assert not {"good", "broken"} & {e.name for e in load_errors}
    monkeypatch.setenv("CLIPX_LOAD_PLUGINS", "clipx-tmp-good")  # by distribution name
    reload_plugins()
    loaded = {p["name"] for p in plugin_info()}
    assert "good" in loaded and "broken" not in {e.name for e in load_errors}


def test_trace_env_prints_hook_calls(monkeypatch, capsys):
    monkeypatch.setenv("CLIPX_TRACE_PLUGINS", "1")
    entries("templates")
    assert "clipx trace: register_templates -> builtin: tecoa" in capsys.readouterr().err
