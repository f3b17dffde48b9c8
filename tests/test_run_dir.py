"""The shared run directory: the models a recipe run finished, and commands that evaluate a run
further (SAFT's grid) taking the run's lock."""

from __future__ import annotations

import json
import os
import socket

from click.testing import CliRunner

from clip_robust_ext.api import START_LABEL, finished_models
from clip_robust_ext.cli import cli

DOC = {
    "recipe": {"name": "r", "seed": 0},
    "model": {"source": "procedural-small"},
    "pretrain": {"name": "ft-standard", "label": "pre"},
    "defense": {"name": "saft", "label": "saft"},
    "baselines": [{"name": "tecoa", "label": "tecoa"}, {"name": "tga-zsr", "label": "tga"}],
    "evaluate": {"protocol": "saft-template"},
}


def _finish(run_dir, label):
    (run_dir / label).mkdir()
    (run_dir / label / "done.json").write_text("{}")


def test_finished_models_lists_the_start_model_and_finished_methods_in_order(tmp_path):
    assert finished_models(tmp_path, DOC) == [(START_LABEL, None)]
    for label in ("tga", "pre", "saft"):
        _finish(tmp_path, label)
    assert finished_models(tmp_path, DOC) == [
        (START_LABEL, tmp_path / "pre" / "final.pt"),
        ("saft", tmp_path / "saft" / "final.pt"),
        ("tga", tmp_path / "tga" / "final.pt"),
    ]


def test_saft_grid_refuses_a_run_dir_that_is_still_running(tmp_path):
    (tmp_path / "recipe.resolved.json").write_text(json.dumps(DOC))
    owner = {"pid": os.getppid(), "host": socket.gethostname(), "started": 0}  # a live process
    (tmp_path / "run.lock").write_text(json.dumps(owner))
    result = CliRunner().invoke(cli, ["saft", "grid", str(tmp_path)])
    assert result.exit_code == 2
    assert f"is in use by clipx process {os.getppid()}" in result.output
    assert json.loads((tmp_path / "run.lock").read_text()) == owner  # left to its owner


def test_saft_grid_names_a_directory_that_holds_no_saft_results(tmp_path):
    result = CliRunner().invoke(cli, ["saft", "grid", str(tmp_path)])
    assert result.exit_code == 2 and "no saft-template / saft-ensemble results" in result.output
