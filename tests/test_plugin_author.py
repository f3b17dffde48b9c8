"""The plugin author's path: docs/PLUGINS.md's examples and tables, errors from plugin code,
`clipx protocols show`, and the `clipx plugin new` skeleton installed and tested."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from importlib import metadata

import pytest
import torch
from click.testing import CliRunner
from helpers import REPO, assets, tiny_clip
from torchattacks.attack import Attack

from clip_robust_ext import ClipxUsageError, hookimpl
from clip_robust_ext.api import Protocol, ZeroShotClassifier, build_attack, factory_for, load_clip
from clip_robust_ext.cli import cli
from clip_robust_ext.evaluation import protocol_from_dict
from clip_robust_ext.evaluation.engine import plan_attacks
from clip_robust_ext.evaluation.protocol_fields import BEGIN, END, block
from clip_robust_ext.registry import KINDS, entries, get
from clip_robust_ext.run.records import evaluate_loaded
from clip_robust_ext.scaffold import new_plugin

PAGE = REPO / "docs" / "PLUGINS.md"


def test_protocol_field_table_in_the_docs_is_the_generated_one():
    text = PAGE.read_text()
    shown = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert shown == block(), (
        "regenerate: python -m clip_robust_ext.evaluation.protocol_fields docs/PLUGINS.md"
    )
    for field in ("cascade", "checks", "checks_n", "checks_strict", "early_exit", "lineage"):
        assert f"| `{field}` |" in shown


def test_docs_name_every_registry_kind_and_number_their_sections():
    text = PAGE.read_text()
    listed = re.findall(r"`(\w+)`\s+\(`register_\w+`\)", text)
    assert sorted(listed) == sorted(KINDS)
    numbers = re.findall(r"^## (\d+)b?\.", text, flags=re.M)
    assert sorted(set(numbers), key=int) == [str(i) for i in range(1, int(numbers[-1]) + 1)]
    assert "## 4b. A custom evaluation protocol" in text and "ClipxUsageError(" in text


def test_unknown_registry_kind_lists_the_kinds():
    with pytest.raises(ClipxUsageError, match=r"'attack' \(did you mean 'attacks'\?\).*evaluators"):
        get("attack", "pgd")
    with pytest.raises(ValueError):  # still a ValueError for callers that caught one
        entries("protocols")


def _docs_protocol_module() -> types.ModuleType:
    """The custom-protocol example of docs/PLUGINS.md, run as the module it shows."""
    text = PAGE.read_text()
    start = text.index("# clipx_lab/__init__.py")
    code = text[start : text.index("```", start)]
    module = types.ModuleType("clipx_lab_docs")
    exec(compile(code, "PLUGINS.md", "exec"), module.__dict__)
    return module


def test_the_documented_custom_protocol_works(register_plugin):
    register_plugin(_docs_protocol_module(), "lab")
    proto = protocol_from_dict({"protocol": "lab-pgd-apgd", "steps": 50, "n_samples": 100})
    assert [a["label"] for a in proto.attacks] == ["pgd-50", "apgd-ce"]
    assert proto.attacks[0]["params"]["steps"] == 50 and proto.n_samples == 100
    assert proto.eps == [2 / 255, 4 / 255]
    with pytest.raises(ClipxUsageError, match="unknown setting 'n_sample'.*'n_samples'"):
        protocol_from_dict({"protocol": "lab-pgd-apgd", "n_sample": 5})
    shown = CliRunner().invoke(cli, ["protocols", "show", "lab-pgd-apgd", "--json"])
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.stdout)
    assert doc["plugin"] == "lab" and doc["eps"] == ["2/255", "4/255"]
    assert doc["attacks"][1]["params"] == {"version": "custom", "attacks": ["apgd-ce"]}


def test_protocols_show_prints_a_preset_with_attack_spellings_and_defaults():
    out = CliRunner().invoke(cli, ["protocols", "show", "autoattack"])
    assert out.exit_code == 0, out.output
    assert out.stdout.startswith("# protocol autoattack (plugin: builtin)")
    assert '"apgd-ce",' in out.stdout and "[attacks.defaults]" in out.stdout
    assert "n_iter = 100" in out.stdout and 'eps = [\n    "1/255",\n]' in out.stdout
    bad = CliRunner().invoke(cli, ["protocols", "show", "autoatack"])
    assert bad.exit_code == 2 and "did you mean 'autoattack'" in bad.stderr
    listed = CliRunner().invoke(cli, ["protocols", "--json"])  # the listing still works
    assert "tecoa-16" in {r["name"] for r in json.loads(listed.stdout)}


class _RaisingPlugin:
    """A plugin whose factory rejects a value with a plain ValueError, as plugin code does."""

    @hookimpl
    def register_attacks(self, register):
        def lab_rs(model, eps: float = 4 / 255, restarts: int = 1, mode: str = "fast"):
            if restarts < 1:
                raise ValueError(f"restarts must be a positive integer, got {restarts}")
            if mode not in ("fast", "exact"):
                raise ValueError(f"mode must be 'fast' or 'exact', got {mode!r}")
            raise TypeError("unsupported model type")

        register("lab-rs", lab_rs, modality="image")


def test_a_plugin_factory_value_error_is_a_usage_error_naming_plugin_and_parameter(
    register_plugin,
):
    register_plugin(_RaisingPlugin(), "lab")
    torch.manual_seed(0)
    zs = ZeroShotClassifier(load_clip("clipx-tiny"), classnames=["a", "b"], templates=["{}"])
    with pytest.raises(ClipxUsageError) as err:
        build_attack("lab-rs", zs, eps="4/255", restarts=0)
    assert str(err.value) == (
        "attack 'lab-rs' (plugin 'lab'): parameter 'restarts': restarts must be a positive "
        "integer, got 0"
    )
    with pytest.raises(ClipxUsageError, match=r"\(plugin 'lab'\): eps=.*restarts=2: unsupported"):
        build_attack("lab-rs", zs, eps="4/255", restarts=2)  # no parameter named: values shown


def test_a_plugin_value_error_from_the_cli_is_one_line_exit_2(register_plugin, tmp_path):
    assets()
    register_plugin(_RaisingPlugin(), "lab")
    out = CliRunner().invoke(
        cli,
        ["eval", "--model", "clipx-small-c10", "--protocol", "pgd", "--dataset",
         "procedural-shapes", "--n-samples", "4", "--set", 'attacks=[{name = "lab-rs", '
         'mode = "slow"}]', "--run-dir", str(tmp_path / "run")],
    )  # fmt: skip
    assert out.exit_code == 2, out.output
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "Error: attack 'lab-rs' (plugin 'lab'): parameter 'mode': mode must be 'fast' or"
        )
    )
    assert "Traceback" not in out.output


def test_plugin_new_refuses_bad_names_and_existing_folders(tmp_path):
    bad = CliRunner().invoke(cli, ["plugin", "new", "Lab Attacks", "--dir", str(tmp_path)])
    assert bad.exit_code == 2 and "plugin name 'Lab Attacks'" in bad.stderr
    assert CliRunner().invoke(cli, ["plugin", "new", "lab", "--dir", str(tmp_path)]).exit_code == 0
    again = CliRunner().invoke(cli, ["plugin", "new", "lab", "--dir", str(tmp_path)])
    assert again.exit_code == 2 and "already exists" in again.stderr


@pytest.mark.slow
def test_plugin_new_skeleton_installs_and_passes_its_own_tests(tmp_path):
    root = new_plugin("lab-attacks", tmp_path)
    pyproject = (root / "pyproject.toml").read_text()
    assert (
        'lab-attacks = "clipx_lab_attacks"' in pyproject
        and "[project.entry-points.clipx]" in pyproject
    )
    target = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
         "--target", str(target), str(root)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stdout + pip.stderr
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0 and "3 passed" in run.stdout, run.stdout[-3000:] + run.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "clip_robust_ext", "attacks", "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    mine = [r for r in json.loads(listed.stdout) if r["name"] == "lab-attacks-margin"]
    assert mine and mine[0]["plugin"] == "lab-attacks"


class _MarginStep(Attack):
    """A plugin's own attack class on the torchattacks base (one signed step on the CE loss)."""

    def __init__(self, model, eps: float = 4 / 255):
        super().__init__("MarginStep", model)
        self.eps, self.supported_mode = eps, ["default"]

    def forward(self, images, labels):
        x = images.clone().detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(self.get_logits(x), labels)
        grad = torch.autograd.grad(loss, x)[0]
        return (images + self.eps * grad.sign()).clamp(0, 1).detach()


def test_backend_names_the_plugin_whose_code_runs(register_plugin):
    class Lab:
        @hookimpl
        def register_attacks(self, register):
            register("lab-step", factory_for(_MarginStep), modality="image")

    register_plugin(Lab(), "lab")
    torch.manual_seed(0)
    zs = ZeroShotClassifier(load_clip("clipx-tiny"), classnames=["a", "b"], templates=["{}"])
    proto = Protocol(attacks=["lab-step", "fgsm"], eps=["4/255"])
    backends = {p.name: p.backend for p in plan_attacks(zs, proto)}
    version = metadata.version("torchattacks")
    assert backends == {
        "lab-step": f"plugin lab on torchattacks {version}",  # the plugin's code, not torchattacks'
        "fgsm": f"torchattacks {version}",
    }


def test_clipx_attacks_lists_clashing_names_qualified_and_strict_fails(register_plugin):
    class Lab:
        @hookimpl
        def register_attacks(self, register):
            register("pgd", factory_for(_MarginStep), modality="image", description="lab's pgd")
            register("lab-step", factory_for(_MarginStep), modality="image")

    register_plugin(Lab(), "lab")
    listed = CliRunner().invoke(cli, ["attacks", "--json"])
    assert listed.exit_code == 0, listed.output  # without --strict a clash is reported only
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["pgd"]["plugin"] == "builtin"
    assert rows["lab:pgd"]["plugin"] == "lab" and rows["lab:pgd"]["description"] == "lab's pgd"
    assert "lab-step" in rows and "lab:lab-step" not in rows  # unshared names stay plain
    table = CliRunner().invoke(cli, ["attacks"])
    assert re.search(r"^lab:pgd\s+image\s+lab\s+lab's pgd$", table.stdout, flags=re.M)
    strict = CliRunner().invoke(cli, ["attacks", "--strict"])
    assert strict.exit_code == 1 and "--strict: 1 plugin problem" in strict.stderr
    assert "this one is 'lab:pgd'" in strict.stderr
    assert CliRunner().invoke(cli, ["plugins", "--strict", "--json"]).exit_code == 1
    assert CliRunner().invoke(cli, ["datasets", "--strict"]).exit_code == 0  # no clash there


def test_cards_and_leaderboard_rows_name_the_plugins_behind_a_result(register_plugin, tmp_path):
    class Lab:
        @hookimpl
        def register_attacks(self, register):
            register("lab-step", factory_for(_MarginStep), modality="image")

    register_plugin(Lab(), "lab")
    protocol = Protocol(
        name="prov-test",
        attacks=["lab-step"],
        eps=["2/255"],
        datasets=[{"dataset": "procedural-shapes", "split": "test"}],
        n_samples=4,
        templates="shapes",
        checks="off",
    )
    evaluate_loaded(tiny_clip(0), protocol, tmp_path / "run", "a")
    (card,) = [json.loads(p.read_text()) for p in (tmp_path / "run" / "cards").glob("*.json")]
    parts = card["components"]
    assert parts["attacks"] == [
        {"name": "lab-step", "plugin": "lab", "distribution": "(registered at runtime)"}
    ]
    assert "protocol" not in parts  # built in Python here, not a registered preset
    assert parts["datasets"][0]["name"] == "procedural-shapes"
    assert parts["datasets"][0]["distribution"].startswith("clip-robust-ext ")
    out = tmp_path / "board"
    board = CliRunner().invoke(cli, ["leaderboard", str(tmp_path / "run"), "--out", str(out)])
    assert board.exit_code == 0, board.output
    (row,) = json.loads((out / "leaderboard.json").read_text())["rows"]
    assert row["components"] == parts
    assert (
        row["plugins"]
        == f"clip-robust-ext {metadata.version('clip-robust-ext')}, (registered at runtime)"
    )
    assert "plugins" in (out / "leaderboard.csv").read_text().splitlines()[0]
