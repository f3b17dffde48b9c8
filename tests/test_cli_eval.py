"""`clipx eval`: a model or checkpoint under a protocol without a recipe; datasets add up in a run dir."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import assets

from clip_robust_ext.cli import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, ["eval", *args])


@pytest.mark.slow
def test_eval_json_and_adding_a_dataset_to_a_run_dir(tmp_path):
    assets()
    run_dir = tmp_path / "ev"
    common = [
        "--model",
        "clipx-small-c10",
        "--protocol",
        "pgd",
        "--set",
        "steps=2",
        "--eps",
        "2/255",
        "--templates",
        "tecoa",
        "--n",
        "8",
        "--run-dir",
        str(run_dir),
    ]
    first = invoke(*common, "--dataset", "cifar10-jpegs", "--json")
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    (rec,) = doc["records"]
    assert doc["request"]["model"] == {"source": "clipx-small-c10"}
    assert rec["label"] == "clipx-small-c10" and rec["dataset"] == "cifar10-jpegs" and rec["n"] == 8
    assert rec["eps"] == pytest.approx(2 / 255) and list(rec["per_attack"]) == ["pgd-2"]
    assert 0 <= rec["robust_acc"] <= rec["clean_acc"] <= 100

    second = invoke(*common, "--dataset", "procedural-shapes")
    assert second.exit_code == 0, second.output
    everything = json.loads((run_dir / "results.json").read_text())
    assert {r["dataset"] for r in everything} == {"cifar10-jpegs", "procedural-shapes"}
    assert "cifar10-jpegs" in second.stdout and "procedural-shapes" in second.stdout  # one table

    again = invoke(*common, "--dataset", "cifar10-jpegs", "--json")  # finished: reused
    assert json.loads(again.stdout)["records"][0]["computed_at"] == rec["computed_at"]
    assert not (run_dir / "run.lock").exists()


def test_eval_usage_errors_exit_2(tmp_path):
    unknown = invoke("--model", "clipx-smal-c10", "--protocol", "clean")
    assert unknown.exit_code == 2 and "did you mean 'clipx-small-c10'" in unknown.stderr
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"")
    no_arch = invoke("--model", str(ckpt), "--protocol", "clean")
    assert no_arch.exit_code == 2 and "needs --arch" in no_arch.stderr
    bad_protocol = invoke("--model", "open_clip", "--arch", "clipx-tiny", "--protocol", "pgdd")
    assert bad_protocol.exit_code == 2 and "did you mean 'pgd'" in bad_protocol.stderr
    bad_eps = invoke(
        "--model", "open_clip", "--arch", "clipx-tiny", "--protocol", "pgd", "--eps", "2/0"
    )
    assert bad_eps.exit_code == 2 and "cannot parse '2/0'" in bad_eps.stderr
    bad_attack = invoke(
        "--model", "open_clip", "--arch", "clipx-tiny", "--protocol", "pgd", "--attack", "fgsn"
    )
    assert bad_attack.exit_code == 2 and "did you mean 'fgsm'" in bad_attack.stderr
    for result in (unknown, no_arch, bad_protocol, bad_eps, bad_attack):
        assert result.stdout == "" and "Traceback" not in result.output
