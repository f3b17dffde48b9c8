"""transformers CLIP folders (CLIPModel / CLIPVisionModel) read into open_clip, checked against
transformers itself on tiny randomly initialised models it builds."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.models import load_clip
from clip_robust_ext.models.zoo import zoo

REPO_ID = "clipx-test/tiny-hf-clip"
REVISION = "fedcba9876543210fedcba9876543210fedcba98"


def tiny_config(act: str = "quick_gelu", image_size: int = 32) -> transformers.CLIPConfig:
    """A 2-layer CLIP with OpenAI's vocabulary (open_clip's tokenizer applies) and its own shapes
    per tower (width, heads and MLP ratio differ, so a swapped dimension cannot pass)."""
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    text.update(num_attention_heads=2, max_position_embeddings=16, hidden_act=act)
    vision = dict(hidden_size=48, intermediate_size=192, num_hidden_layers=3, hidden_act=act)
    vision.update(num_attention_heads=3, image_size=image_size, patch_size=8, projection_dim=24)
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)


def hf_clip_folder(folder, seed: int = 0, act: str = "quick_gelu") -> transformers.CLIPModel:
    torch.manual_seed(seed)
    model = transformers.CLIPModel(tiny_config(act)).eval()
    with torch.no_grad():  # a trained-looking scale (the init's log(1/0.07) hides little)
        model.logit_scale.fill_(3.0)
    model.save_pretrained(folder)
    return model


def _inputs(loaded, seed: int = 1):
    torch.manual_seed(seed)
    images = torch.randn(3, 3, *loaded.image_size)
    texts = loaded.tokenizer(["a photo of a cat", "a dog", "an apple on a long table"])
    return images, texts


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_transformers_clip_loads_into_open_clip_with_equal_logits(tmp_path, act):
    hf = hf_clip_folder(tmp_path / "clip", act=act)
    loaded = load_clip(f"local-dir:{tmp_path / 'clip'}")
    assert loaded.info["checkpoint_format"] == "transformers-full"
    cfg = loaded.info["model_cfg"]
    assert cfg["quick_gelu"] is (act == "quick_gelu")
    assert cfg["vision_cfg"] == {
        **dict(width=48, layers=3, head_width=16, mlp_ratio=4.0),
        **dict(patch_size=8, image_size=32),
    }
    assert cfg["text_cfg"]["context_length"] == 16 and cfg["embed_dim"] == 24
    images, texts = _inputs(loaded)
    with torch.no_grad():
        ref = hf(input_ids=texts, pixel_values=images)
        img, txt, scale = loaded.model(images, texts)
    assert torch.allclose(img, ref.image_embeds, atol=1e-5)
    assert torch.allclose(txt, ref.text_embeds, atol=1e-5)
    assert torch.allclose(scale * img @ txt.T, ref.logits_per_image, atol=1e-5)
    assert ref.logits_per_image.std() > 0.1  # the logits differ across pairs: a real comparison


def test_vision_model_folders_load_with_and_without_projection(tmp_path):
    full = hf_clip_folder(tmp_path / "clip")
    plain = transformers.CLIPVisionModel(full.config.vision_config)
    plain.vision_model.load_state_dict(full.vision_model.state_dict())
    plain.save_pretrained(tmp_path / "vision")
    with_proj = transformers.CLIPVisionModelWithProjection(full.config.vision_config)
    with_proj.load_state_dict(
        {**full.vision_model.state_dict(prefix="vision_model.")}, strict=False
    )
    with_proj.visual_projection.load_state_dict(full.visual_projection.state_dict())
    with_proj.save_pretrained(tmp_path / "vision-proj")

    loaded = load_clip(f"local-dir:{tmp_path / 'vision'}")  # features = the pooled class token
    images, _ = _inputs(loaded)
    with torch.no_grad():
        pooled = plain(pixel_values=images).pooler_output
        projected = with_proj(pixel_values=images).image_embeds
        assert torch.allclose(loaded.model.encode_image(images), pooled, atol=1e-5)
        got = load_clip(f"local-dir:{tmp_path / 'vision-proj'}").model.encode_image(images)
        assert torch.allclose(got, projected, atol=1e-5)

    # a vision tower on top of a full model: the base keeps its text tower and projection
    torch.manual_seed(5)
    other = transformers.CLIPVisionModel(full.config.vision_config).eval()
    other.save_pretrained(tmp_path / "robust-vision")
    base = f"local-dir:{tmp_path / 'clip'}"
    both = load_clip(base, pretrained=f"local-dir:{tmp_path / 'robust-vision'}")
    assert both.info["checkpoint_format"] == "transformers-visual"
    with torch.no_grad():
        expected = other(pixel_values=images).pooler_output @ full.visual_projection.weight.T
        assert torch.allclose(both.model.encode_image(images), expected, atol=1e-5)
        texts = both.tokenizer(["a cat"])
        assert torch.allclose(
            both.model.encode_text(texts), full.get_text_features(input_ids=texts), atol=1e-5
        )


def cached_hf_repo(home, repo_id: str, monkeypatch) -> transformers.CLIPModel:
    """A tiny transformers CLIP in an offline HF cache (refs/main -> snapshots/<rev>/)."""
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    hf = hf_clip_folder(repo / "snapshots" / REVISION)
    (repo / "snapshots" / REVISION / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]})
    )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hf


def test_transformers_folder_loads_by_hub_name_from_an_offline_cache(tmp_path, monkeypatch):
    hf = cached_hf_repo(tmp_path / "hf", REPO_ID, monkeypatch)

    loaded = load_clip(f"hf-hub:{REPO_ID}")
    assert loaded.info["hub_repo"] == REPO_ID and loaded.info["hub_revision"] == REVISION
    assert loaded.mean == (0.5, 0.5, 0.5) and loaded.std == (0.25, 0.25, 0.25)
    images, texts = _inputs(loaded)
    with torch.no_grad():
        ref = hf(input_ids=texts, pixel_values=images).logits_per_image
        img, txt, scale = loaded.model(images, texts)
    assert torch.allclose(scale * img @ txt.T, ref, atol=1e-5)


def test_truncated_and_foreign_folders_are_refused_in_one_line(tmp_path):
    hf_clip_folder(tmp_path / "clip")
    weights = tmp_path / "clip" / "model.safetensors"
    state = load_file(weights)
    dropped = "vision_model.encoder.layers.2.self_attn.q_proj.weight"
    save_file({k: v for k, v in state.items() if k != dropped}, weights)
    with pytest.raises(ClipxUsageError) as err:
        load_clip(f"local-dir:{tmp_path / 'clip'}")
    assert dropped in str(err.value) and "missing 1 keys" in str(err.value)
    assert "\n" not in str(err.value)

    weights.write_bytes(weights.read_bytes()[:1000])  # a download cut short
    with pytest.raises(ClipxUsageError, match="not a readable safetensors file"):
        load_clip(f"local-dir:{tmp_path / 'clip'}")

    foreign = tmp_path / "bert"
    transformers.BertModel(
        transformers.BertConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=100,
        )
    ).save_pretrained(foreign)
    with pytest.raises(ClipxUsageError) as err:
        load_clip(f"local-dir:{foreign}")
    assert "model_type 'bert' is not a transformers CLIP" in str(err.value)
    assert "\n" not in str(err.value)


def test_leaf_zoo_entry_loads_its_transformers_repo(tmp_path, monkeypatch):
    """zoo:leaf-vitl14-fare2 names a transformers CLIPModel repo; a tiny stand-in in the cache
    under that id loads through the transformers path (the real one is ViT-L/14, 1.7 GB)."""
    entry = zoo()["leaf-vitl14-fare2"]
    assert entry["format"].startswith("transformers CLIPModel")
    hf = cached_hf_repo(tmp_path / "hf", entry["hub"], monkeypatch)
    loaded = load_clip("zoo:leaf-vitl14-fare2")
    assert loaded.info["checkpoint_format"] == "transformers-full"
    assert loaded.info["zoo"] == "leaf-vitl14-fare2"
    images, texts = _inputs(loaded)
    with torch.no_grad():
        ref = hf(input_ids=texts, pixel_values=images).logits_per_image
        img, txt, scale = loaded.model(images, texts)
    assert torch.allclose(scale * img @ txt.T, ref, atol=1e-5)
    assert all(e["format"] and e["license"] for e in zoo().values())
