"""The clipx CLI: listings, --json documents, exit codes, plugin commands, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from helpers import REPO

from clip_robust_ext import ClipxError, ClipxUsageError, __version__, hookimpl
from clip_robust_ext.cli import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_help_and_version():
    for flag in ("-h", "--help"):
        result = invoke(flag)
        assert result.exit_code == 0
        for command in (
            "recipe",
            "attacks",
            "defenses",
            "datasets",
            "models",
            "protocols",
            "plugins",
            "eval",
        ):
            assert command in result.stdout
    assert invoke("--version").stdout.strip() == f"clipx, version {__version__}"
    assert "show" in invoke("recipe", "-h").stdout


def test_version_does_not_import_torch():
    code = (
        "import sys; from clip_robust_ext.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert __version__ in out.stdout


def test_attacks_json_is_one_document_with_modality_and_plugin():
    result = invoke("attacks", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["pgd"]["modality"] == "image" and rows["pgd"]["plugin"] == "builtin"
    assert rows["pgd"]["params"]["steps"] == 10
    assert "torchattacks.PGD" in rows["pgd"]["description"]
    image_only = json.loads(invoke("attacks", "--json", "--modality", "text").stdout)
    assert all(r["modality"] == "text" for r in image_only)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("datasets", "procedural-shapes"),
        ("models", "open_clip"),
        ("templates", "tecoa"),
    ],
)
def test_registry_listings(command, expected):
    result = invoke(command, "--json")
    assert result.exit_code == 0, result.output
    assert expected in {r["name"] for r in json.loads(result.stdout)}
    table = invoke(command)
    assert table.exit_code == 0 and expected in table.stdout and "PLUGIN" in table.stdout


def test_plugins_json_lists_builtins_with_versions():
    result = invoke("plugins", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    builtin = {p["name"]: p for p in doc["plugins"]}["builtin"]
    assert builtin["distribution"] == "clip-robust-ext" and builtin["version"] == __version__
    assert "register_attacks" in builtin["hooks"] and builtin["loaded"] is True


def test_plugin_whose_hook_raises_shows_in_plugins(register_plugin):
    class Broken:
        @hookimpl
        def register_defenses(self, register):
            raise ImportError("needs a package that is not installed")

    register_plugin(Broken(), "broken-hook")
    result = invoke("plugins", "--json")
    assert result.exit_code == 0
    rows = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert "ImportError: needs a package" in rows["broken-hook"]["errors"][0]
    assert rows["broken-hook"]["distribution"] == "(registered at runtime)"
    assert rows["builtin"]["errors"] == []
    human = invoke("plugins")
    assert "broken-hook" in human.stdout and "needs a package" in human.stderr


def test_recipe_list_and_show(tmp_path):
    listed = invoke("recipe", "list", "--json")
    assert listed.exit_code == 0, listed.output
    names = {r["name"] for r in json.loads(listed.stdout)}
    shipped = {p.stem for p in (REPO / "recipes").glob("*.toml")}
    assert shipped <= names


@pytest.fixture
def toy_defense(register_plugin):
    from test_recipes import ToyPlugin

    register_plugin(ToyPlugin(), "toy-cli")


def _toy_recipe(tmp_path, typo: bool = False):
    path = tmp_path / "toy.toml"
    key = "datset" if typo else "dataset"
    path.write_text(
        f'[recipe]\nname = "toy"\n[model]\nsource = "open_clip"\n'
        f'arch = "clipx-tiny"\n[data]\n{key} = "procedural-shapes"\n'
        '[defense]\nname = "toy-ce"\nlr = 1e-4\n'
    )
    return path


def test_recipe_show_json_and_toml(tmp_path, toy_defense):
    path = _toy_recipe(tmp_path)
    result = invoke("recipe", "show", str(path), "--json", "--set", "data.n=10")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["model"] == {"source": "open_clip", "arch": "clipx-tiny"}
    assert doc["data"]["n"] == 10 and doc["recipe"]["profile"] == "default"
    assert doc["defense"]["train"]["lr"] == 1e-4
    toml = invoke("recipe", "show", str(path))
    assert toml.exit_code == 0 and '[model]\nsource = "open_clip"' in toml.stdout


def test_misspelt_key_exits_2_naming_key_and_closest(tmp_path, toy_defense):
    result = invoke("recipe", "show", str(_toy_recipe(tmp_path, typo=True)))
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "data.datset: unknown key (did you mean 'dataset'?)" in lines[0]
    assert "Traceback" not in result.output


def test_usage_errors_exit_2():
    assert invoke("recipe", "show", "no-such-recipe").exit_code == 2
    assert invoke("recipe", "show").exit_code == 2  # click: missing argument
    assert invoke("no-such-command").exit_code == 2
    bad_set = invoke("recipe", "show", "no-such-recipe", "--set", "oops")
    assert bad_set.exit_code == 2 and "Error:" in bad_set.stderr


class _Commands:
    @hookimpl
    def register_commands(self, cli):
        @cli.command(name="hello-plugin")
        @click.option("--fail", type=click.Choice(["usage", "runtime", "no"]), default="no")
        def hello(fail):
            """A command added by a plugin."""
            if fail == "usage":
                raise ClipxUsageError("bad value for --thing (did you mean 'thing'?)")
            if fail == "runtime":
                raise ClipxError("the GPU fell over\nsecond line")
            click.echo("hello from a plugin")

        @cli.command(name="eval")
        def hijack():
            """Tries to replace a built-in command."""


@pytest.fixture
def command_plugin(register_plugin):
    import clip_robust_ext.cli as cli_module

    register_plugin(_Commands(), "command-plugin")
    yield
    cli.commands.pop("hello-plugin", None)
    cli_module._commands_from.discard("command-plugin")


def test_register_commands_hook_and_exit_codes(command_plugin):
    assert "hello-plugin" in invoke("--help").stdout
    ok = invoke("hello-plugin")
    assert ok.exit_code == 0 and ok.stdout == "hello from a plugin\n"
    usage = invoke("hello-plugin", "--fail", "usage")
    assert usage.exit_code == 2
    assert usage.stderr == "Error: bad value for --thing (did you mean 'thing'?)\n"
    runtime = invoke("hello-plugin", "--fail", "runtime")
    assert runtime.exit_code == 1 and runtime.stderr == "Error: the GPU fell over second line\n"
    assert cli.commands["eval"].callback.__name__ == "eval_command"  # built-ins cannot be replaced


def test_console_entry_point_never_prints_a_traceback():
    out = subprocess.run(
        [sys.executable, "-m", "clip_robust_ext", "recipe", "show", "/no/such/recipe.toml"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert (
        out.stderr.strip().splitlines()[-1] == "Error: recipe file not found: /no/such/recipe.toml"
    )
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_recipe_show_mmcoa_with_set_prints_the_resolved_recipe():
    if not (REPO / "recipes" / "mmcoa.toml").is_file():
        pytest.skip("recipes/mmcoa.toml not written yet")
    result = invoke("recipe", "show", "mmcoa", "--set", "defense.lr=1e-5", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["recipe"]["name"] == "mmcoa" and doc["defense"]["name"] == "mmcoa"
    assert doc["defense"]["train"]["lr"] == 1e-5
    typo = invoke("recipe", "show", "mmcoa", "--set", "defense.lrr=1e-5")
    assert typo.exit_code == 2
    assert "defense.lrr: unknown key (did you mean 'lr'?)" in typo.stderr
