"""Checkpoints in the transformers CLIP format (`CLIPModel`, `CLIPVisionModel[WithProjection]`).

LEAF and the LLaVA world publish and load CLIP as transformers folders (config.json +
model.safetensors). The architecture is the same as open_clip's ViT CLIP; only names and layouts
differ: q/k/v are separate linears (open_clip fuses them into one in-projection), the projections
are bias-free linears (open_clip keeps their transposes as matrices). This module maps the keys and
shapes both ways and derives the open_clip config from the transformers one, so clipx reads such a
folder into open_clip and writes its models back for `from_pretrained`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPVisionConfig

from ..errors import ClipxUsageError
from .checkpoints import read_state_dict

HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
FULL_TYPE, VISION_TYPE = "clip", "clip_vision_model"
_ACTS = {"quick_gelu": True, "gelu": False}  # transformers' hidden_act -> open_clip quick_gelu
# one transformer block: (transformers suffix, open_clip suffix); q/k/v are fused separately
_BLOCK = (
    ("layer_norm1", "ln_1"),
    ("self_attn.out_proj", "attn.out_proj"),
    ("layer_norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
)
_VISION = (  # transformers (under vision_model.) -> open_clip (under visual.)
    ("embeddings.class_embedding", "class_embedding"),
    ("embeddings.patch_embedding.weight", "conv1.weight"),
    ("embeddings.position_embedding.weight", "positional_embedding"),
    ("pre_layrnorm.weight", "ln_pre.weight"),
    ("pre_layrnorm.bias", "ln_pre.bias"),
    ("post_layernorm.weight", "ln_post.weight"),
    ("post_layernorm.bias", "ln_post.bias"),
)
_TEXT = (  # transformers (under text_model.) -> open_clip (top level)
    ("embeddings.token_embedding.weight", "token_embedding.weight"),
    ("embeddings.position_embedding.weight", "positional_embedding"),
    ("final_layer_norm.weight", "ln_final.weight"),
    ("final_layer_norm.bias", "ln_final.bias"),
)
_BUFFERS = ("position_ids",)  # saved by older transformers versions; not weights


def hf_config(folder: Path) -> dict[str, Any] | None:
    """The transformers CLIP config of `folder`, or None if it is not a transformers CLIP folder."""
    path = Path(folder) / HF_CONFIG
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise ClipxUsageError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("model_type") not in (FULL_TYPE, VISION_TYPE):
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise ClipxUsageError(
            f"{path}: model_type {kind!r} is not a transformers CLIP "
            f"('{FULL_TYPE}' or '{VISION_TYPE}'); clipx reads CLIP folders only"
        )
    return config


def hf_weights(folder: Path) -> Path:
    found = next((Path(folder) / n for n in HF_WEIGHTS if (Path(folder) / n).is_file()), None)
    if found is None:
        raise ClipxUsageError(f"{folder}: transformers CLIP folder without {HF_WEIGHTS[0]}")
    return found


def _act(cfg: dict[str, Any], where: str) -> bool:
    act = cfg.get("hidden_act", "quick_gelu")
    if act not in _ACTS:
        raise ClipxUsageError(f"{where}: hidden_act {act!r} has no open_clip equivalent")
    eps = cfg.get("layer_norm_eps", 1e-5)
    if abs(eps - 1e-5) > 1e-12:
        raise ClipxUsageError(f"{where}: layer_norm_eps {eps} differs from open_clip's 1e-5")
    return _ACTS[act]


def _tower_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    width, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    return {
        "width": width,
        "layers": cfg["num_hidden_layers"],
        "mlp_ratio": cfg["intermediate_size"] / width,
        "heads": heads,
    }


def open_clip_config(
    config: dict[str, Any], where: str = "config.json", projection: bool = True
) -> dict[str, Any]:
    """open_clip's model config (embed_dim, vision_cfg, text_cfg, quick_gelu) of a transformers
    CLIP config. A vision-only folder gets transformers' default text tower (random weights);
    one without a projection (`CLIPVisionModel`) gets embed_dim = width."""

    full = config.get("model_type") == FULL_TYPE
    vision = config.get("vision_config", {}) if full else config
    text = config.get("text_config", {}) if full else CLIPTextConfig().to_dict()
    try:
        v, t = {**_tower_defaults("vision"), **vision}, {**_tower_defaults("text"), **text}
        vision_cfg = _tower_cfg(v)
        vision_cfg["head_width"] = vision_cfg.pop("width") // vision_cfg.pop("heads")
        vision_cfg.update(width=v["hidden_size"], patch_size=v["patch_size"])
        vision_cfg["image_size"] = v["image_size"]
        text_cfg = {**_tower_cfg(t), "context_length": t["max_position_embeddings"]}
        text_cfg["vocab_size"] = t["vocab_size"]
    except (KeyError, TypeError, ZeroDivisionError) as exc:
        raise ClipxUsageError(f"{where}: incomplete transformers CLIP config ({exc})") from None
    quick = _act(v, where)
    if full and _act(t, where) != quick:
        raise ClipxUsageError(f"{where}: the towers use different activations")
    embed = config.get("projection_dim", v.get("projection_dim")) if projection else None
    embed = embed or v["hidden_size"]
    return {"embed_dim": embed, "quick_gelu": quick, "vision_cfg": vision_cfg, "text_cfg": text_cfg}


def _tower_defaults(kind: str) -> dict[str, Any]:

    cls = CLIPVisionConfig if kind == "vision" else CLIPTextConfig
    return cls().to_dict()


def _blocks_to_open_clip(hf: dict, src: str, dst: str, layers: int, out: dict) -> None:
    for i in range(layers):
        s, d = f"{src}.encoder.layers.{i}.", f"{dst}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [hf.pop(f"{s}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"{d}attn.in_proj_{kind}"] = torch.cat(qkv, 0)
            for h, o in _BLOCK:
                out[f"{d}{o}.{kind}"] = hf.pop(f"{s}{h}.{kind}")


def to_open_clip(state: dict[str, torch.Tensor], cfg: dict[str, Any], where: str) -> dict:
    """open_clip keys for a transformers CLIP state dict; one-line error naming missing keys."""
    hf = {k: v for k, v in state.items() if not k.endswith(_BUFFERS)}
    out: dict[str, torch.Tensor] = {}
    vision_only = not any(k.startswith("text_model.") for k in hf)
    expected = set(from_open_clip_keys(cfg, vision_only=vision_only))
    missing = sorted(expected - set(hf) - {"visual_projection.weight"})
    if missing:
        raise ClipxUsageError(
            f"{where}: not a transformers CLIP checkpoint of this config: missing {len(missing)} "
            f"keys (e.g. {missing[:3]})"
        )
    for h, o in _VISION:
        out[f"visual.{o}"] = hf.pop(f"vision_model.{h}")
    _blocks_to_open_clip(hf, "vision_model", "visual.", cfg["vision_cfg"]["layers"], out)
    if "visual_projection.weight" in hf:
        out["visual.proj"] = hf.pop("visual_projection.weight").t()
    if "text_model.embeddings.token_embedding.weight" in hf:
        for h, o in _TEXT:
            out[o] = hf.pop(f"text_model.{h}")
        _blocks_to_open_clip(hf, "text_model", "", cfg["text_cfg"]["layers"], out)
        out["text_projection"] = hf.pop("text_projection.weight").t()
        out["logit_scale"] = hf.pop("logit_scale")
    if hf:
        raise ClipxUsageError(
            f"{where}: unexpected keys {sorted(hf)[:3]} for a CLIP of this config"
        )
    return {k: v.contiguous() for k, v in out.items()}


def from_open_clip_keys(cfg: dict[str, Any], vision_only: bool = False) -> list[str]:
    """The transformers keys a CLIP of open_clip config `cfg` has (projection included)."""
    keys = [f"vision_model.{h}" for h, _ in _VISION] + ["visual_projection.weight"]
    keys += _block_keys("vision_model", cfg["vision_cfg"]["layers"])
    if not vision_only:
        keys += [f"text_model.{h}" for h, _ in _TEXT] + ["text_projection.weight", "logit_scale"]
        keys += _block_keys("text_model", cfg["text_cfg"]["layers"])
    return keys


def _block_keys(src: str, layers: int) -> list[str]:
    names = [f"self_attn.{p}_proj" for p in "qkv"] + [h for h, _ in _BLOCK]
    pairs = [(i, n) for i in range(layers) for n in names]
    return [f"{src}.encoder.layers.{i}.{n}.{k}" for i, n in pairs for k in ("weight", "bias")]


def _blocks_to_hf(oc: dict, src: str, dst: str, layers: int, out: dict) -> None:
    for i in range(layers):
        s, d = f"{src}transformer.resblocks.{i}.", f"{dst}.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            for p, part in zip("qkv", oc[f"{s}attn.in_proj_{kind}"].chunk(3, 0)):
                out[f"{d}self_attn.{p}_proj.{kind}"] = part
            for h, o in _BLOCK:
                out[f"{d}{h}.{kind}"] = oc[f"{s}{o}.{kind}"]


def to_transformers(state: dict[str, torch.Tensor], cfg: dict[str, Any], vision_only: bool):
    """transformers CLIP keys for an open_clip ViT CLIP state dict (the inverse of to_open_clip)."""
    out: dict[str, torch.Tensor] = {}
    for h, o in _VISION:
        out[f"vision_model.{h}"] = state[f"visual.{o}"]
    _blocks_to_hf(state, "visual.", "vision_model", cfg["vision_cfg"]["layers"], out)
    out["visual_projection.weight"] = state["visual.proj"].t()
    if not vision_only:
        for h, o in _TEXT:
            out[f"text_model.{h}"] = state[o]
        _blocks_to_hf(state, "", "text_model", cfg["text_cfg"]["layers"], out)
        out["text_projection.weight"] = state["text_projection"].t()
        out["logit_scale"] = state["logit_scale"]
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def read_folder_state(folder: Path, config: dict[str, Any], target: torch.nn.Module) -> dict:
    """The folder's weights with open_clip keys, read safely (safetensors / weights-only).

    A vision tower saved without its projection (`CLIPVisionModel`) keeps `target`'s projection:
    the base model's when loaded on top of one, the identity for a model built from the folder."""

    weights = hf_weights(folder)
    state = read_state_dict(weights)
    cfg = open_clip_config(config, str(weights), "visual_projection.weight" in state)
    state = to_open_clip(state, cfg, str(weights))
    if "visual.proj" not in state:
        state["visual.proj"] = target.visual.proj.detach().clone()
    return state


def build_from_config(config: dict[str, Any], folder: Path) -> tuple[torch.nn.Module, dict]:
    """The open_clip CLIP a transformers config describes, with the folder's pixel statistics."""

    projection = "visual_projection.weight" in weight_keys(folder)
    cfg = open_clip_config(config, str(Path(folder) / HF_CONFIG), projection)
    model = open_clip.CLIP(**cfg)
    if not projection:
        with torch.no_grad():  # CLIPVisionModel has no projection: features are the pooled tokens
            model.visual.proj.copy_(torch.eye(cfg["embed_dim"]))
    model.visual.preprocess_cfg = _preprocess_cfg(Path(folder), cfg)
    return model, cfg


def _preprocess_cfg(folder: Path, cfg: dict[str, Any]) -> dict[str, Any]:

    pre: dict[str, Any] = {}
    path = folder / "preprocessor_config.json"
    if path.is_file():
        try:
            pre = json.loads(path.read_text())
        except ValueError as exc:
            raise ClipxUsageError(f"{path}: not valid JSON ({exc})") from None
    return {
        "size": cfg["vision_cfg"]["image_size"],
        "mean": tuple(pre.get("image_mean", open_clip.OPENAI_DATASET_MEAN)),
        "std": tuple(pre.get("image_std", open_clip.OPENAI_DATASET_STD)),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }


def weight_keys(folder: Path) -> set[str]:
    """The tensor names of the folder's weights (read from the safetensors header alone)."""

    path = hf_weights(folder)
    if path.suffix != ".safetensors":
        return set(read_state_dict(path))
    try:
        with safe_open(str(path), "pt") as fh:
            return set(fh.keys())
    except Exception as exc:
        raise ClipxUsageError(f"{path}: not a readable safetensors file ({exc})") from None
