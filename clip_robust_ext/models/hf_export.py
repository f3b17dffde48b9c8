"""Writing clipx models as transformers CLIP folders: `CLIPModel` (hf-clip) or the vision tower
alone (hf-vision), what LLaVA-style models load with `CLIPVisionModel.from_pretrained`.

The weights go through transformers itself: the model is built from the derived config and loaded
with `strict=True`, so a folder is only written if transformers accepts every tensor. `image_size`
resizes the position embedding the standard way (bicubic on the patch grid, class token kept), as
robust 224 px towers need for LLaVA-1.5's 336 px.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import open_clip
import torch
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from ..errors import ClipxUsageError
from .hf_clip import to_transformers

FORMATS = ("hf-clip", "hf-vision")
# the open_clip config fields a transformers CLIP can express; any other must keep its default
_VISION_FIELDS = {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size"}
_TEXT_FIELDS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
_IGNORED = {"patch_dropout", "output_tokens"}  # training-time / output options, not weights


def _non_default(cfg: dict[str, Any], cls: type, allowed: set[str]) -> list[str]:
    default = cls()
    filled = cls(**cfg)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in allowed | _IGNORED]
    return [n for n in names if getattr(filled, n) != getattr(default, n)]


def transformers_config(model_cfg: dict[str, Any], image_size: int | None = None):
    """The transformers `CLIPConfig` of an open_clip ViT CLIP config; refuses what it cannot
    express (ResNet / timm / HF text towers, attention pooling, layer scale ...) by name."""

    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    if isinstance(vision.get("layers"), (list, tuple)):
        raise ClipxUsageError("a ResNet vision tower has no transformers CLIP form (ViT only)")
    odd = _non_default(vision, open_clip.model.CLIPVisionCfg, _VISION_FIELDS)
    odd += [f"text {n}" for n in _non_default(text, open_clip.model.CLIPTextCfg, _TEXT_FIELDS)]
    if odd:
        raise ClipxUsageError(f"the transformers CLIP format cannot express open_clip's {odd}")
    v = open_clip.model.CLIPVisionCfg(**vision)
    t = open_clip.model.CLIPTextCfg(**text)
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    size = image_size or (v.image_size if isinstance(v.image_size, int) else v.image_size[0])
    vision_config = dict(hidden_size=v.width, num_hidden_layers=v.layers, hidden_act=act)
    vision_config.update(num_attention_heads=v.width // v.head_width, patch_size=v.patch_size)
    vision_config.update(intermediate_size=int(v.width * v.mlp_ratio), image_size=size)
    vision_config["projection_dim"] = model_cfg["embed_dim"]
    text_config = dict(hidden_size=t.width, num_hidden_layers=t.layers, hidden_act=act)
    text_config.update(num_attention_heads=t.heads, intermediate_size=int(t.width * t.mlp_ratio))
    text_config.update(vocab_size=t.vocab_size, max_position_embeddings=t.context_length)
    return CLIPConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=model_cfg["embed_dim"],
    )


def resize_positions(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """A ViT position embedding (class token + g*g patches) for a grid*grid patch grid: bicubic
    interpolation of the patch positions, the class token's kept as is."""
    old = int(round((pos.shape[0] - 1) ** 0.5))
    if old * old != pos.shape[0] - 1:
        raise ClipxUsageError(f"position embedding of {pos.shape[0]} tokens is not 1 + a square")
    if old == grid:
        return pos
    patches = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = torch.nn.functional.interpolate(
        patches.float(), size=(grid, grid), mode="bicubic", align_corners=False
    )
    patches = patches.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(pos.dtype)
    return torch.cat([pos[:1], patches], 0)


def save_transformers(
    model: torch.nn.Module,
    model_cfg: dict[str, Any],
    dest: str | os.PathLike,
    fmt: str = "hf-clip",
    image_size: int | None = None,
    pixel_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> Path:
    """Write `model` (an open_clip ViT CLIP) as a transformers folder that `from_pretrained`
    loads: CLIPModel (hf-clip) or CLIPVisionModelWithProjection (hf-vision), with a
    preprocessor_config.json for CLIPImageProcessor."""

    if fmt not in FORMATS:
        raise ClipxUsageError(f"unknown export format '{fmt}' (choose from {', '.join(FORMATS)})")
    config = transformers_config(model_cfg, image_size)
    state = dict(model.state_dict())
    patch = config.vision_config.patch_size
    if config.vision_config.image_size % patch:
        raise ClipxUsageError(f"--image-size {image_size} is not a multiple of the patch {patch}")
    grid = config.vision_config.image_size // patch
    state["visual.positional_embedding"] = resize_positions(
        state["visual.positional_embedding"], grid
    )
    vision_only = fmt == "hf-vision"
    try:
        hf_state = to_transformers(state, model_cfg, vision_only=vision_only)
    except KeyError as exc:
        raise ClipxUsageError(f"not an open_clip ViT CLIP: no weight {exc}") from None
    target = (
        CLIPVisionModelWithProjection(config.vision_config) if vision_only else CLIPModel(config)
    )
    target.load_state_dict(hf_state, strict=True)  # transformers accepts every tensor, or none
    target.eval().save_pretrained(dest, safe_serialization=True)
    _image_processor(config.vision_config.image_size, pixel_stats).save_pretrained(dest)
    if not vision_only and config.text_config.vocab_size == OPENAI_VOCAB:
        save_tokenizer(Path(dest), config.text_config.max_position_embeddings)
    return Path(dest)


OPENAI_VOCAB = 49408
_SPECIAL = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}


def save_tokenizer(dest: Path, context_length: int) -> None:
    """OpenAI's BPE, which open_clip's tokenizer uses, as transformers' CLIPTokenizer files
    (vocab.json + merges.txt): the same ids, so `CLIPProcessor.from_pretrained` works on the
    folder. transformers pads with the end token where open_clip pads with 0; the causal mask
    and end-token pooling make the text embedding the same."""

    bpe = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    vocab = {_SPECIAL.get(k, k): v for k, v in bpe.encoder.items()}
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = "\n".join(" ".join(pair) for pair in merges)
    (dest / "merges.txt").write_text(f"#version: 0.2\n{lines}\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        str(dest / "vocab.json"), str(dest / "merges.txt"), model_max_length=context_length
    )
    tokenizer.save_pretrained(dest)


def _image_processor(size: int, pixel_stats):

    mean, std = pixel_stats or (open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(mean),
        image_std=list(std),
    )


def usage_lines(fmt: str, arch: str, resize: tuple[int, int] | None) -> list[str]:
    """The model card's format section: what the folder is, where it came from, how to load it."""
    kind = "CLIPModel" if fmt == "hf-clip" else "CLIPVisionModelWithProjection (vision tower)"
    lines = [
        "## Format",
        "",
        f"transformers `{kind}`, converted by clipx from the open_clip model `{arch}`.",
    ]
    if resize:
        lines.append(
            f"Input resolution changed from {resize[0]} to {resize[1]} px: the position embedding "
            "was interpolated bicubically on the patch grid (class token kept); the weights are "
            "otherwise the trained ones, evaluated below at the trained resolution."
        )
    loader = "CLIPModel" if fmt == "hf-clip" else "CLIPVisionModel"
    return [
        *lines,
        "",
        "```python",
        f"from transformers import {loader}, CLIPImageProcessor",
        f"model = {loader}.from_pretrained('THIS_FOLDER')",
        "processor = CLIPImageProcessor.from_pretrained('THIS_FOLDER')",
        "# LLaVA-style: model(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]",
        "```",
        "",
    ]
