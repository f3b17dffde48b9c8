"""open_clip's schema names (`hf-hub:ORG/NAME`, `local-dir:PATH`) served offline from a real
Hugging Face cache layout and a model folder, through load_clip and `clipx eval`."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from clip_robust_ext.cli import cli
from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.models import load_clip, save_open_clip_checkpoint
from clip_robust_ext.models.clip import CONFIG_DIR

REPO_ID = "clipx-test/tiny-robust"
REVISION = "0123456789abcdef0123456789abcdef01234567"
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _model_folder(folder, seed: int, weights_name: str) -> dict[str, torch.Tensor]:
    """An open_clip model folder (config JSON with model_cfg/preprocess_cfg + weights) holding a
    seeded clipx-tiny; returns the state dict written."""
    torch.manual_seed(seed)
    model = load_clip("clipx-tiny").model
    folder.mkdir(parents=True)
    config = {
        "model_cfg": json.loads((CONFIG_DIR / "clipx-tiny.json").read_text()),
        "preprocess_cfg": {"mean": list(MEAN), "std": list(STD)},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_open_clip_checkpoint(model, folder / weights_name)
    return model.state_dict()


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """HF_HOME with `REPO_ID` cached in the hub layout (refs/main -> snapshots/<rev>/files)."""
    home = tmp_path / "hf"
    repo = home / "hub" / ("models--" + REPO_ID.replace("/", "--"))
    state = _model_folder(repo / "snapshots" / REVISION, 0, "open_clip_model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home, state


def _same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_hf_hub_name_loads_offline_from_the_cache(hf_cache):
    home, state = hf_cache
    loaded = load_clip(f"hf-hub:{REPO_ID}")
    assert _same_weights(loaded.model, state)
    assert loaded.mean == MEAN and loaded.std == STD  # the repo's preprocess_cfg
    assert loaded.info["hub_repo"] == REPO_ID and loaded.info["hub_revision"] == REVISION
    assert loaded.info["checkpoint_format"] == "full"
    assert loaded.info["checkpoint"].endswith("open_clip_model.safetensors")
    assert loaded.tokenizer(["a photo of a cat"]).shape[-1] == loaded.model.context_length

    # ARCH + pretrained=hub name: the repo's weights into a built-in architecture
    named = load_clip("clipx-tiny", pretrained=f"hf-hub:{REPO_ID}")
    assert _same_weights(named.model, state) and named.info["hub_revision"] == REVISION


def test_missing_hub_repo_names_repo_and_cache(hf_cache):
    home, _ = hf_cache
    with pytest.raises(ClipxUsageError) as err:
        load_clip("hf-hub:clipx-test/not-downloaded")
    msg = str(err.value)
    assert "\n" not in msg and "hf-hub:clipx-test/not-downloaded" in msg
    assert str(home / "hub" / "models--clipx-test--not-downloaded") in msg
    assert "HF_HUB_OFFLINE=1" in msg


def test_local_dir_and_its_vision_only_weights(tmp_path):
    folder = tmp_path / "exported"
    state = _model_folder(folder, 1, "open_clip_pytorch_model.bin")
    loaded = load_clip(f"local-dir:{folder}")
    assert _same_weights(loaded.model, state) and loaded.mean == MEAN
    assert "hub_repo" not in loaded.info

    # a vision-only release (TeCoA/FARE style) as pretrained on top of the folder's config
    torch.manual_seed(2)
    other = load_clip("clipx-tiny").model
    torch.save(other.visual.state_dict(), tmp_path / "visual.pt")
    mixed = load_clip(f"local-dir:{folder}", pretrained=str(tmp_path / "visual.pt"))
    assert mixed.info["checkpoint_format"] == "visual" and mixed.info["base_checkpoint"]
    assert torch.equal(mixed.model.visual.proj, other.visual.proj)
    assert torch.equal(mixed.model.text_projection, state["text_projection"])

    with pytest.raises(ClipxUsageError, match="no open_clip_config.json"):
        load_clip(f"local-dir:{tmp_path / 'nowhere'}")


def _eval(*args: str):
    return CliRunner().invoke(
        cli,
        ["eval", "--model", "open_clip", *args, "--protocol", "clean"]
        + ["--dataset", "procedural-shapes", "--n", "10", "--json"],
    )


def test_clipx_eval_hub_and_local_dir_offline(hf_cache, tmp_path):
    home, _ = hf_cache
    hub = _eval("--arch", f"hf-hub:{REPO_ID}", "--run-dir", str(tmp_path / "hub-run"))
    assert hub.exit_code == 0, hub.output
    (rec,) = json.loads(hub.stdout)["records"]
    assert rec["n"] == 10 and 0 <= rec["clean_acc"] <= 100

    folder = tmp_path / "folder"
    _model_folder(folder, 3, "open_clip_model.safetensors")
    local = _eval("--arch", f"local-dir:{folder}", "--run-dir", str(tmp_path / "dir-run"))
    assert local.exit_code == 0, local.output
    assert json.loads(local.stdout)["records"][0]["n"] == 10

    missing = _eval("--arch", "hf-hub:clipx-test/absent")
    assert missing.exit_code == 2
    assert "hf-hub:clipx-test/absent" in missing.stderr
    assert str(home / "hub" / "models--clipx-test--absent") in missing.stderr
    assert "Traceback" not in missing.output


def test_hub_name_as_model(hf_cache, tmp_path):
    """`--model hf-hub:ORG/NAME` like `--model ViT-B-32`: the open_clip source with that name."""
    result = CliRunner().invoke(
        cli,
        ["eval", "--model", f"hf-hub:{REPO_ID}", "--protocol", "clean"]
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
    doc = json.loads(result.stdout)
    assert doc["request"]["model"] == {"source": "open_clip", "arch": f"hf-hub:{REPO_ID}"}
