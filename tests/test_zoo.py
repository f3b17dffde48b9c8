"""The zoo of published robust CLIPs: complete, cited entries; `zoo:NAME` resolves offline."""

from __future__ import annotations

import json
import re

import open_clip
import pytest
from click.testing import CliRunner
from test_hub import REVISION, _model_folder, _same_weights

from clip_robust_ext.cli import cli
from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.models import load_clip
from clip_robust_ext.models.zoo import zoo, zoo_file_path

EPS = re.compile(r"^(0|\d+/255)$")


def test_every_entry_is_loadable_cited_and_numbered():
    entries = list(zoo().values())
    assert len(entries) >= 8
    for e in entries:
        assert e["source"].startswith("https://github.com/"), e["name"]
        assert any(k in e for k in ("hub", "url", "hub_file", "manual_url")), e["name"]
        if "arch" in e:
            assert e["arch"] in open_clip.list_models(), e["name"]
        else:
            assert "hub" in e, f"{e['name']}: without arch only a hub repo defines the model"
        if "base" in e:
            assert open_clip.get_pretrained_cfg(e["arch"], e["base"]), e["name"]
        for r in e["reported"]:
            assert EPS.match(r["eps"]) and 0 <= r["acc"] <= 100, e["name"]
        assert e["protocol"] and e["license"] and e["method"] and e["norm"] == "linf"
    with_numbers = [e for e in entries if e["reported"]]
    assert len(with_numbers) >= 8
    # the RobustVLM README's figures, spot-checked against the file (exact, not rounded)
    fare2 = zoo()["fare2-vitl14"]
    assert fare2["hub"] == "chs20/fare2-clip"
    assert [r["acc"] for r in fare2["reported"]] == [67.0, 43.1, 20.5]


def test_zoo_name_loads_the_hub_repo_offline(tmp_path, monkeypatch):
    """zoo:fare2-vitl14 -> hf-hub:chs20/fare2-clip, served from a cache holding a stand-in."""
    repo = tmp_path / "hf" / "hub" / "models--chs20--fare2-clip"
    state = _model_folder(repo / "snapshots" / REVISION, 0, "open_clip_pytorch_model.bin")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_clip("zoo:fare2-vitl14")
    assert _same_weights(loaded.model, state)
    assert loaded.info["zoo"] == "fare2-vitl14" and loaded.info["hub_repo"] == "chs20/fare2-clip"

    result = CliRunner().invoke(
        cli,
        ["eval", "--model", "zoo:fare2-vitl14", "--protocol", "clean"]
        + [
            "--dataset",
            "procedural-shapes",
            "--n",
            "4",
            "--json",
            "--run-dir",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["records"][0]["n"] == 4


def test_missing_downloads_say_what_to_fetch_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    url_entry = zoo()["tecoa4-vitb32"]
    with pytest.raises(ClipxUsageError) as err:
        load_clip("zoo:tecoa4-vitb32")
    assert url_entry["url"] in str(err.value) and str(zoo_file_path(url_entry)) in str(err.value)
    manual = zoo()["tga-zsr"]
    with pytest.raises(ClipxUsageError) as err:
        load_clip("zoo:tga-zsr")
    assert manual["manual_url"] in str(err.value) and str(zoo_file_path(manual)) in str(err.value)
    with pytest.raises(ClipxUsageError, match="did you mean 'fare2-vitl14'"):
        load_clip("zoo:fare2-vitl4")
    with pytest.raises(ClipxUsageError, match="drop pretrained"):
        load_clip("zoo:fare2-vitl14", pretrained="openai")


def test_models_zoo_cli_lists_entries_with_sources_and_numbers():
    result = CliRunner().invoke(cli, ["models", "--zoo", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == list(zoo())
    assert all(r["source"] and r["where"] for r in rows)
    table = CliRunner().invoke(cli, ["models", "--zoo"])
    assert "fare2-vitl14" in table.stdout and "clean: 67.0" in table.stdout
    plain = CliRunner().invoke(cli, ["models", "--json"])
    assert "open_clip" in {r["name"] for r in json.loads(plain.stdout)}
