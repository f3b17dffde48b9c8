"""Tiny timm image towers of the families open_clip builds through timm (SigLIP ViT with MAP
pooling, EVA-02, ConvNeXt, MobileCLIP's FastViT-MCi), registered under `clipx_tiny_*` names.

open_clip's timm adapter cannot shrink a timm model from a config JSON (it passes only the timm
name), so the tiny test configs in configs/clipx-tiny-{sigmoid,eva,convnext,mobileclip}.json name
these: each is the real timm builder of its family with tiny widths and depths at 32x32, so
tests exercise the family's actual layers (MAP head, rotary attention + SwiGLU, depthwise convs,
RepMixer + attention stages) in seconds. The SigLIP config is `clipx-tiny-sigmoid`: open_clip
gives any name containing "siglip" the SentencePiece tokenizer, a download; the tiny one keeps
open_clip's bundled BPE tokenizer with SigLIP's text tower (no causal mask, last-token pooling)
and its sigmoid head (`init_logit_bias`)."""

from __future__ import annotations

from typing import Any

import timm
from timm.models import register_model

# family builder in timm -> tiny overrides (every size-defining argument of that builder)
TINY_TOWERS: dict[str, tuple[str, dict[str, Any]]] = {
    "clipx_tiny_siglip_vit": (
        "vit_base_patch16_siglip_224",
        {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
    ),
    "clipx_tiny_eva02": (
        "eva02_base_patch16_clip_224",
        {
            "img_size": 32,
            "patch_size": 8,
            "embed_dim": 32,
            "depth": 2,
            "num_heads": 2,
            "ref_feat_shape": (4, 4),
        },
    ),
    "clipx_tiny_convnext": ("convnext_atto", {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32)}),
    "clipx_tiny_mci": (
        "fastvit_mci1",
        {"layers": (1, 1, 1, 1), "embed_dims": (32, 32, 64, 64)},
    ),
}


def _builder(name: str):
    family, tiny = TINY_TOWERS[name]

    def build(pretrained: bool = False, **kwargs: Any) -> Any:
        if pretrained:
            raise ValueError(f"{name} is a random-init test tower; it has no pretrained weights")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)  # create_model's own arguments, passed on to every builder
        return timm.create_model(family, pretrained=False, **{**tiny, **kwargs})

    build.__name__ = name
    build.__qualname__ = name
    build.__module__ = __name__
    return build


for _name in TINY_TOWERS:
    if _name not in timm.list_models(_name):
        register_model(_builder(_name))
