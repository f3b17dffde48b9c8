"""clipx models written as transformers CLIP folders (hf-clip, hf-vision), read back by
transformers itself: round trip, LLaVA's penultimate hidden states, the 336 px resize, and a
robust model trained by a shipped recipe."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import transformers
from click.testing import CliRunner

from clip_robust_ext.cli import cli
from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.models import load_clip, vision_hidden_states
from clip_robust_ext.models.clip import CONFIG_DIR
from clip_robust_ext.models.hf_export import save_transformers


def tiny(seed: int = 0, arch: str = "clipx-tiny"):
    torch.manual_seed(seed)
    loaded = load_clip(arch)
    return loaded, json.loads((CONFIG_DIR / f"{arch}.json").read_text())


def _images(size: int, n: int = 2, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(n, 3, size, size)


def test_open_clip_to_hf_clip_and_back_is_exact(tmp_path):
    loaded, cfg = tiny()
    save_transformers(loaded.model, cfg, tmp_path / "hf", "hf-clip")
    back = load_clip(f"local-dir:{tmp_path / 'hf'}")
    before, after = loaded.model.state_dict(), back.model.state_dict()
    assert set(before) == set(after)
    assert all(torch.equal(before[k], after[k]) for k in before)

    hf = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()  # transformers agrees
    images, texts = _images(32), loaded.tokenizer(["a red square", "a blue circle"])
    with torch.no_grad():
        ref = hf(input_ids=texts, pixel_values=images).logits_per_image
        img, txt, scale = loaded.model(images, texts)
    assert torch.allclose(scale * img @ txt.T, ref, atol=1e-5)

    # the folder is complete for transformers: its own tokenizer and image processor
    processor = transformers.CLIPProcessor.from_pretrained(tmp_path / "hf")
    prompts = ["a red square", "Hello, World! It's 3.5 déjà-vu", "a blue circle"]
    ids = processor(text=prompts, padding="max_length", max_length=16, return_tensors="pt")
    ours = loaded.tokenizer(prompts)
    assert torch.equal(ids.input_ids[ours != 0], ours[ours != 0])  # padding differs: eot vs 0
    with torch.no_grad():
        theirs = hf.get_text_features(input_ids=ids.input_ids)
        assert torch.allclose(theirs, loaded.model.encode_text(ours), atol=1e-5)


def test_hf_vision_penultimate_hidden_states_equal_clipx(tmp_path):
    loaded, cfg = tiny(seed=3)
    save_transformers(loaded.model, cfg, tmp_path / "vision", "hf-vision")
    hf = transformers.CLIPVisionModel.from_pretrained(tmp_path / "vision").eval()  # as LLaVA does
    images = _images(32, n=3)
    with torch.no_grad():
        states = hf(pixel_values=images, output_hidden_states=True).hidden_states
        ours = vision_hidden_states(loaded.model, images, patch_only=False)
        patches = vision_hidden_states(loaded.model, images)
    assert ours.shape == states[-2].shape == (3, 1 + 16, 64)
    assert torch.allclose(ours, states[-2], atol=1e-5)
    assert torch.allclose(patches, states[-2][:, 1:], atol=1e-5)  # LLaVA's 'patch' selection
    assert not torch.allclose(ours, states[-1], atol=1e-3)  # the penultimate, not the last
    processor = json.loads((tmp_path / "vision" / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 32, "width": 32}


def test_336_export_runs_at_336_with_the_standard_interpolation(tmp_path):
    loaded, cfg = tiny(seed=4)
    save_transformers(loaded.model, cfg, tmp_path / "v336", "hf-vision", image_size=336)
    hf = transformers.CLIPVisionModel.from_pretrained(tmp_path / "v336").eval()
    assert hf.config.image_size == 336

    # the standard resize, computed here: bicubic on the 4x4 patch grid -> 42x42, class token kept
    pos = loaded.model.visual.positional_embedding.detach()
    grid = pos[1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(42, 42), mode="bicubic", align_corners=False)
    expected = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(42 * 42, 64)])
    exported = hf.vision_model.embeddings.position_embedding.weight.detach()
    assert torch.allclose(exported, expected, atol=1e-6)
    assert torch.equal(exported[0], pos[0])

    # at 336 px it computes what the open_clip tower with that embedding computes
    with torch.no_grad():
        loaded.model.visual.positional_embedding = torch.nn.Parameter(expected)
        images = _images(336, n=1)
        ours = vision_hidden_states(loaded.model, images, patch_only=False)
        states = hf(pixel_values=images, output_hidden_states=True).hidden_states
    assert states[-2].shape == (1, 1 + 42 * 42, 64)
    assert torch.allclose(ours, states[-2], atol=1e-5)


def test_towers_transformers_cannot_express_are_refused(tmp_path):
    loaded, cfg = tiny(arch="clipx-tiny-rn")
    with pytest.raises(ClipxUsageError, match="ResNet vision tower"):
        save_transformers(loaded.model, cfg, tmp_path / "rn", "hf-vision")
    loaded, cfg = tiny()
    with pytest.raises(ClipxUsageError, match="not a multiple of the patch"):
        save_transformers(loaded.model, cfg, tmp_path / "odd", "hf-vision", image_size=300)
    odd = {**cfg, "vision_cfg": {**cfg["vision_cfg"], "attentional_pool": True}}
    with pytest.raises(ClipxUsageError, match="attentional_pool"):
        save_transformers(loaded.model, odd, tmp_path / "pool", "hf-clip")
    assert not (tmp_path / "rn").exists() and not (tmp_path / "pool").exists()


@pytest.mark.slow
def test_tecoa_trained_tower_exports_for_llava(tmp_path):
    """The shipped TeCoA recipe on a ViT start model (its default start model, procedural-small,
    is a ResNet tower, which has no transformers CLIP form), exported at 336 px."""
    run_dir = tmp_path / "run"
    overrides = [
        "model={source='open_clip', arch='clipx-tiny'}",
        "data.n=16",
        "defense.max_steps=2",
        "defense.batch_size=8",
        "evaluate.n_samples=8",
        "evaluate.steps=2",
    ]
    args = ["recipe", "run", "tecoa", "--run-dir", str(run_dir)]
    ran = CliRunner().invoke(cli, args + [a for o in overrides for a in ("--set", o)])
    assert ran.exit_code == 0, ran.output
    export = ["export", str(run_dir / "tecoa"), "--format", "hf-vision", "--hub-folder"]
    for folder, size in (("native", []), ("336", ["--image-size", "64"])):
        exported = CliRunner().invoke(cli, export + [str(tmp_path / folder)] + size)
        assert exported.exit_code == 0, exported.output

    hf = transformers.CLIPVisionModel.from_pretrained(tmp_path / "native").eval()
    trained = load_clip("clipx-tiny", pretrained=run_dir / "tecoa" / "final.pt")
    trained_conv = trained.model.visual.conv1.weight
    images = _images(32, n=2)
    with torch.no_grad():
        states = hf(pixel_values=images, output_hidden_states=True).hidden_states
        assert torch.allclose(
            vision_hidden_states(trained.model, images), states[-2][:, 1:], atol=1e-5
        )
    resized = transformers.CLIPVisionModel.from_pretrained(tmp_path / "336")
    assert resized.config.image_size == 64
    assert torch.equal(resized.vision_model.embeddings.patch_embedding.weight, trained_conv)

    out = tmp_path / "336"
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "`clipx-tiny`" in card
    assert "from 32 to 64 px" in card and "**tecoa**" in card
    (record,) = [
        r for r in json.loads((run_dir / "results.json").read_text()) if r["label"] == "tecoa"
    ]
    assert f"| {record['clean_acc']} |" in card

    refused = CliRunner().invoke(
        cli,
        [
            "export",
            str(run_dir / "tecoa"),
            "--hub-folder",
            str(tmp_path / "x"),
            "--image-size",
            "64",
        ],
    )
    assert refused.exit_code == 2 and "--image-size applies" in refused.stderr
