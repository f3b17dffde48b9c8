"""Parameter scopes (`scope = full | lora | first-blocks | prompt`) and adapters as artifacts."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from helpers import tiny_clip

from clip_robust_ext import hookimpl
from clip_robust_ext.api import Defense
from clip_robust_ext.cli import cli
from clip_robust_ext.data import ProceduralShapes
from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.models import ZeroShotClassifier, load_clip, read_state_dict
from clip_robust_ext.models.checkpoints import model_fingerprint
from clip_robust_ext.training import TrainConfig, export_open_clip, train
from clip_robust_ext.training.checkpoint import load_checkpoint
from clip_robust_ext.training.scope import prepare, select
from clip_robust_ext.utils.seeding import seed_everything

# what LoRA may change on clipx-tiny's image tower (2 blocks): attention q/k/v and MLP weights
LORA_CHANGES = re.compile(
    r"visual\.transformer\.resblocks\.[01]\."
    r"(attn\.in_proj_weight|mlp\.c_fc\.weight|mlp\.c_proj\.weight)"
)
# what first-blocks (k = 1) may change: patch embedding, class/positional embeddings, ln_pre, block 0
FIRST_BLOCK = re.compile(
    r"visual\.(conv1\.weight|class_embedding|positional_embedding|ln_pre\..*"
    r"|transformer\.resblocks\.0\..*)"
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _logits(loaded, images, classnames):
    zs = ZeroShotClassifier(loaded, classnames).eval()
    with torch.no_grad():
        return zs(images)


def _config(scope: str, **extra) -> TrainConfig:
    values = dict(max_steps=3, batch_size=8, lr=1e-2, optimizer="adamw", warmup_steps=0, seed=1)
    return TrainConfig(scope=scope, lora_rank=4, **{**values, **extra})


@pytest.mark.parametrize("arch", ["clipx-tiny", "clipx-tiny-rn", "clipx-tiny-convnext"])
def test_lora_at_initialisation_gives_the_base_logits(arch):
    data = ProceduralShapes("test", n=6, seed=4)
    images = torch.stack([data[i][0] for i in range(6)])
    torch.manual_seed(0)
    loaded = load_clip(arch)
    base = copy.deepcopy(loaded)
    scope = prepare(loaded, TrainConfig(scope="lora", trainable="visual").resolved())
    params = select(loaded.model, scope)
    kinds = {type(m).__name__ for n, m in loaded.model.named_modules() if n.endswith("lora_A")}
    # ViT: peft's MultiheadAttention + Linear LoRA; ResNet and ConvNeXt: Conv2d LoRA
    assert kinds and all(".lora_" in n for n in scope.trainable_names)
    assert {"visual"} == {n.split(".")[0] for n in scope.trainable_names}
    assert sum(p.numel() for p in params) == scope.trainable_count > 0
    got, want = _logits(loaded, images, data.classnames), _logits(base, images, data.classnames)
    assert torch.allclose(got, want, atol=1e-6, rtol=0), (got - want).abs().max()


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """clipx-tiny trained 3 TeCoA steps with LoRA on the image tower: (base, trained, run dir)."""
    run_dir = tmp_path_factory.mktemp("lora") / "run"
    base = tiny_clip()
    loaded = copy.deepcopy(base)
    data = ProceduralShapes("train", n=32, seed=2)
    train(loaded, "tecoa", data, _config("lora", checkpoint_every=3), run_dir, progress=False)
    return base, loaded, run_dir


def _changed(base, model) -> set[str]:
    before, after = base.model.state_dict(), model.state_dict()
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_lora_training_changes_only_the_adapted_weights(lora_run, tmp_path):
    base, trained, run_dir = lora_run
    changed = _changed(base, trained.model)
    assert changed and all(LORA_CHANGES.fullmatch(k) for k in changed), sorted(changed)
    # before merging (the training checkpoint): every base tensor is bitwise the base's
    state = load_checkpoint(run_dir / "checkpoint.pt")["model"]
    base_state = base.model.state_dict()
    for key, value in state.items():
        if ".lora_" not in key:
            assert torch.equal(value, base_state[key.replace(".base_layer", "")]), key
    assert any(".lora_B." in k and v.abs().sum() > 0 for k, v in state.items())
    # the artifact: only the LoRA matrices, and a config naming the base
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["base"]["fingerprint"] == model_fingerprint(base.model)
    assert config["scope"] == "lora" and config["trainable_params"] > 0
    assert (run_dir / "adapter" / "adapter_model.safetensors").stat().st_size < (
        run_dir / "final.pt"
    ).stat().st_size / 10
    scope = json.loads((run_dir / "scope.json").read_text())
    assert scope["trainable_params"] == config["trainable_params"]
    with pytest.raises(ClipxUsageError, match="final.pt"):  # peft names: not an open_clip file
        export_open_clip(run_dir, tmp_path / "x.pt")


def test_first_blocks_training_changes_only_the_first_block(tmp_path):
    base = tiny_clip()
    loaded = copy.deepcopy(base)
    data = ProceduralShapes("train", n=32, seed=2)
    train(loaded, "tecoa", data, _config("first-blocks"), tmp_path / "run", progress=False)
    changed = _changed(base, loaded.model)
    assert changed and all(FIRST_BLOCK.fullmatch(k) for k in changed), sorted(changed)
    assert "visual.transformer.resblocks.0.mlp.c_fc.weight" in changed
    # the adapter holds exactly the trained tensors; reloaded on the base it gives the model
    torch.manual_seed(0)  # tiny_clip()'s base
    again = load_clip("clipx-tiny", adapter=tmp_path / "run" / "adapter")
    assert not _changed(loaded, again.model)


def test_saved_adapter_reloads_onto_the_base_with_identical_logits(lora_run):
    base, trained, run_dir = lora_run
    data = ProceduralShapes("test", n=8, seed=4)
    images = torch.stack([data[i][0] for i in range(8)])
    want = _logits(trained, images, data.classnames)
    torch.manual_seed(0)  # tiny_clip()'s base
    merged = load_clip("clipx-tiny", adapter=run_dir / "adapter")
    torch.manual_seed(0)
    unmerged = load_clip(
        "clipx-tiny", adapter=f"local-dir:{run_dir / 'adapter'}", merge_adapter=False
    )
    assert any(".lora_A." in n for n, _ in unmerged.model.named_parameters())
    assert torch.equal(_logits(merged, images, data.classnames), want)
    got = _logits(unmerged, images, data.classnames)
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
    assert not torch.allclose(want, _logits(base, images, data.classnames), atol=1e-4)
    assert merged.info["scope"]["base_fingerprint"] == model_fingerprint(base.model)


def test_an_adapter_is_refused_on_another_base(lora_run, tmp_path):
    _, _, run_dir = lora_run
    torch.manual_seed(1)  # another random init of the same architecture
    with pytest.raises(ClipxUsageError, match="fingerprint"):
        load_clip("clipx-tiny", adapter=run_dir / "adapter")
    other = tiny_clip(seed=3)
    torch.save(other.model.state_dict(), tmp_path / "other.pt")
    ran = CliRunner().invoke(
        cli,
        [
            "eval",
            "--model",
            str(tmp_path / "other.pt"),
            "--arch",
            "clipx-tiny",
            "--adapter",
            str(run_dir / "adapter"),
            "--protocol",
            "clean",
            "--run-dir",
            str(tmp_path / "eval"),
        ],
    )
    assert ran.exit_code == 2, ran.output
    assert "fingerprint" in ran.output and "Traceback" not in ran.output


class _ProbeDefense(Defense):
    """A third-party defense that knows nothing of scopes: FARE-like feature loss against the
    frozen reference on PGD examples. It records what the reference is."""

    name = "scope-probe"
    needs_reference = True
    train_defaults = {"optimizer": "adamw", "lr": 1e-2}
    seen: list[dict] = []

    def setup(self, ctx):
        names = [n for n, _ in ctx.reference.clip.named_parameters()]
        _ProbeDefense.seen.append(
            {"lora": any(".lora_" in n for n in names), "fp": model_fingerprint(ctx.reference.clip)}
        )

    def loss(self, batch, ctx):
        x_adv = ctx.attack("pgd", eps=1 / 255, alpha=1 / 255, steps=2)(
            batch.images, batch.labels
        ).images
        with torch.no_grad():
            target = ctx.reference.encode_image(batch.images, normalize=False)
        features = ctx.model.encode_image(x_adv, normalize=False)
        return F.mse_loss(features, target, reduction="sum") / len(batch.images), {}


class _ProbePlugin:
    @hookimpl
    def register_defenses(self, register):
        register("scope-probe", _ProbeDefense, description="test plugin: scope-agnostic loss")


def test_a_third_party_defense_trains_with_lora_against_the_base_reference(
    register_plugin, tmp_path
):
    register_plugin(_ProbePlugin(), "scope-probe-plugin")
    _ProbeDefense.seen.clear()
    data = ProceduralShapes("train", n=32, seed=2)
    first = {}
    for scope in ("full", "lora"):
        base = tiny_clip()
        loaded = copy.deepcopy(base)
        train(loaded, "scope-probe", data, _config(scope), tmp_path / scope, progress=False)
        lines = (tmp_path / scope / "metrics.jsonl").read_text().splitlines()
        losses = [json.loads(x)["loss"] for x in lines]
        first[scope] = losses[0]
        changed = _changed(base, loaded.model)
        assert changed
        if scope == "lora":
            assert all(LORA_CHANGES.fullmatch(k) for k in changed), sorted(changed)
    # the reference was the base both times (no adapters in it), and a LoRA model starts as the
    # base: the first step's loss is the full-scope run's
    assert [s["lora"] for s in _ProbeDefense.seen] == [False, False]
    assert _ProbeDefense.seen[0]["fp"] == _ProbeDefense.seen[1]["fp"]
    assert first["lora"] == pytest.approx(first["full"], rel=1e-6, abs=1e-9)


def test_scope_keys_are_validated_at_recipe_show():
    runner = CliRunner()
    shown = runner.invoke(cli, ["recipe", "show", "scopes"])
    assert shown.exit_code == 0 and 'scope = "lora"' in shown.output, shown.output
    for sets, msg in (
        (["defense.scope=lorra"], "scope must be one of"),
        (["defense.lora_rank=0"], "lora_rank"),
        (["defense.scope=lora", "defense.trainable=last-k:1"], "applies to the towers"),
        (["defense.lora_targets=("], "lora_targets"),
    ):
        args = [x for item in sets for x in ("--set", item)]
        ran = runner.invoke(cli, ["recipe", "show", "scopes", *args])
        assert ran.exit_code == 2 and msg in ran.output, (sets, ran.output)


RECIPE = """
[recipe]
name = "tiny-lora"
seed = 0

[model]
source = "open_clip"
arch = "clipx-tiny"

[data]
dataset = "procedural-shapes"
split = "train"
n = 16
templates = "shapes"

[defense]
name = "tecoa"
scope = "lora"
lora_rank = 4
max_steps = 2
batch_size = 8
lr = 1e-2
optimizer = "adamw"

[evaluate]
protocol = "clean"
templates = "shapes"
n_samples = 8
datasets = [{ dataset = "procedural-shapes", split = "test" }]
"""


@pytest.mark.slow
def test_recipe_lora_run_exports_adapter_or_merged_and_cards_carry_the_scope(tmp_path):
    recipe, run_dir = tmp_path / "tiny.toml", tmp_path / "run"
    recipe.write_text(RECIPE)
    runner = CliRunner()
    ran = runner.invoke(cli, ["recipe", "run", str(recipe), "--run-dir", str(run_dir)])
    assert ran.exit_code == 0, ran.output
    card = json.loads(next((run_dir / "cards").rglob("tecoa*.json")).read_text())
    seed_everything(0)
    base = load_clip("clipx-tiny")  # the recipe's start model (seeded random init)
    assert card["model"]["scope"]["scope"] == "lora"
    assert card["model"]["scope"]["base_fingerprint"] == model_fingerprint(base.model)
    assert card["model"]["scope"]["trainable_params"] > 0

    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    for out, extra in ((adapter, []), (merged, ["--merge-adapter"])):
        done = runner.invoke(
            cli, ["export", str(run_dir / "tecoa"), "--hub-folder", str(out), *extra]
        )
        assert done.exit_code == 0, done.output
    assert sorted(p.name for p in adapter.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    data = ProceduralShapes("test", n=8, seed=4)
    images = torch.stack([data[i][0] for i in range(8)])
    seed_everything(0)
    kept = load_clip("clipx-tiny", adapter=f"local-dir:{adapter}", merge_adapter=False)
    folded = load_clip(f"local-dir:{merged}")
    a, b = _logits(kept, images, data.classnames), _logits(folded, images, data.classnames)
    assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()
    final = read_state_dict(run_dir / "tecoa" / "final.pt")
    assert all(torch.equal(v, final[k]) for k, v in folded.model.state_dict().items())

    # clipx eval --adapter onto the same (seeded) base: accepted, and the card says so
    ran = runner.invoke(
        cli,
        [
            "eval",
            "--model",
            "clipx-tiny",
            "--adapter",
            str(adapter),
            "--protocol",
            "clean",
            "--templates",
            "shapes",
            "--dataset",
            "procedural-shapes",
            "--n",
            "8",
            "--run-dir",
            str(tmp_path / "eval"),
            "--label",
            "with-adapter",
        ],
    )
    assert ran.exit_code == 0, ran.output
    card = json.loads(next((tmp_path / "eval" / "cards").rglob("with-adapter*.json")).read_text())
    assert card["model"]["scope"]["adapter"] == str(adapter)


def test_prompt_scope_is_apts_context_and_refused_where_no_context_exists(tmp_path):
    from clip_robust_ext.registry import get

    apt = get("defenses", "apt").obj()
    assert TrainConfig(scope="prompt").resolved(apt).trainable == "prompt"
    with pytest.raises(ClipxUsageError, match="applies to the towers"):
        TrainConfig(scope="lora").resolved(apt)  # APT trains a prompt, not a tower
    data = ProceduralShapes("train", n=16, seed=2)
    with pytest.raises(ClipxUsageError, match="adds no prompt context"):
        train(tiny_clip(), "tecoa", data, _config("prompt"), tmp_path / "run", progress=False)


def test_lora_under_bf16_autocast_keeps_the_base_frozen(tmp_path):
    base = tiny_clip()
    loaded = copy.deepcopy(base)
    data = ProceduralShapes("train", n=16, seed=2)
    config = _config("lora", amp="bf16", max_steps=2)
    train(loaded, "tecoa", data, config, tmp_path / "run", progress=False)
    changed = _changed(base, loaded.model)
    assert changed and all(LORA_CHANGES.fullmatch(k) for k in changed), sorted(changed)


def test_hub_adapter_loads_offline_from_the_hf_cache(lora_run, tmp_path, monkeypatch):
    import shutil

    _, trained, run_dir = lora_run
    revision = "89abcdef0123456789abcdef0123456789abcdef"
    repo = tmp_path / "hf" / "hub" / "models--clipx-test--tiny-lora"
    snapshot = repo / "snapshots" / revision
    shutil.copytree(run_dir / "adapter", snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    loaded = load_clip("clipx-tiny", adapter="hf-hub:clipx-test/tiny-lora")
    assert not _changed(trained, loaded.model)
    with pytest.raises(ClipxUsageError, match="not in the Hugging Face cache"):
        load_clip("clipx-tiny", adapter="hf-hub:clipx-test/absent")


@pytest.mark.parametrize(
    "arch, stem, block",
    [
        ("clipx-tiny-rn", "visual.bn1.weight", "visual.layer1.0.conv1.weight"),
        ("clipx-tiny-convnext", "visual.trunk.stem.0.weight", "visual.trunk.stages.0.blocks.0."),
    ],
)
def test_first_blocks_on_resnet_and_convnext_towers(tmp_path, arch, stem, block):
    torch.manual_seed(0)
    base = load_clip(arch)
    loaded = copy.deepcopy(base)
    data = ProceduralShapes("train", n=16, seed=2)
    train(loaded, "tecoa", data, _config("first-blocks", max_steps=2), tmp_path, progress=False)
    changed = _changed(base, loaded.model)  # parameters and buffers (BatchNorm statistics)
    assert any(k.startswith(stem) for k in changed) and any(k.startswith(block) for k in changed)
    later = ("visual.layer2.", "visual.layer4.", "visual.attnpool.", "visual.trunk.stages.1.")
    assert not [k for k in changed if k.startswith(later)], sorted(changed)
    assert not [k for k in changed if not k.startswith("visual.")]
