"""Loading CLIP through open_clip: any architecture + pretrained tag, or a local checkpoint."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch

from ..errors import ClipxError, ClipxUsageError, unknown_name
from .checkpoints import load_into_clip, read_state_dict

CONFIG_DIR = Path(__file__).parent / "configs"
_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_registered_dirs: set[str] = set()


def register_model_config(path: str | Path) -> None:
    """Make a JSON architecture (file or folder of files) known to open_clip, once."""
    key = str(Path(path).resolve())
    if key not in _registered_dirs:
        open_clip.add_model_config(key)
        _registered_dirs.add(key)


register_model_config(CONFIG_DIR)


class _NoRandomInitWarning(logging.Filter):
    # open_clip warns "No pretrained weights loaded" when we build first and load our own weights
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


logging.getLogger().addFilter(_NoRandomInitWarning())


@dataclass
class LoadedCLIP:
    """An open_clip model with what is needed to feed it: tokenizer and pixel statistics."""

    model: torch.nn.Module
    tokenizer: Any
    arch: str
    pretrained: str | None = None
    image_size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = open_clip.OPENAI_DATASET_MEAN
    std: tuple[float, ...] = open_clip.OPENAI_DATASET_STD
    info: dict[str, Any] = field(default_factory=dict)
    # speed options (models/accelerate.py): images fed channels_last, a compiled encode_image
    channels_last: bool = False
    image_encoder: Any = field(default=None, repr=False, compare=False)


def _image_size(model: torch.nn.Module) -> tuple[int, int]:
    size = getattr(model.visual, "image_size", 224)
    return tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))


def load_clip(
    arch: str,
    pretrained: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    config: str | os.PathLike | None = None,
) -> LoadedCLIP:
    """Build `arch` with open_clip and load weights.

    pretrained: None (random init, offline), an open_clip tag such as 'openai' (hub download),
    or a local checkpoint in any format `checkpoints.py` accepts. `config` adds an architecture
    JSON (e.g. ../shared/assets/small_clip/clipx-small-c10.json) before building.
    """
    if config is not None:
        if not Path(config).exists():
            raise ClipxUsageError(f"model config not found: {config}")
        register_model_config(config)
    if precision not in _PRECISIONS:
        raise unknown_name("precision", precision, _PRECISIONS)
    if arch not in open_clip.list_models():
        raise unknown_name("open_clip architecture", arch, open_clip.list_models())
    local = pretrained is not None and (
        Path(pretrained).exists()
        or any(str(pretrained).endswith(s) for s in (".pt", ".pth", ".bin", ".safetensors"))
    )
    if local:
        model = open_clip.create_model(arch, pretrained=None, device="cpu")
        kind = load_into_clip(model, read_state_dict(pretrained), source=str(pretrained))
        info = {"checkpoint_format": kind, "checkpoint": str(Path(pretrained).resolve())}
    else:
        try:
            model = open_clip.create_model(arch, pretrained=pretrained, device="cpu")
        except Exception as exc:
            raise ClipxError(
                f"cannot load open_clip weights '{arch}' / '{pretrained}': {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''} - without network access pass a "
                "local checkpoint path as pretrained"
            ) from None
        info = {"checkpoint_format": "open_clip-tag" if pretrained else "random-init"}
    model = model.to(device=device, dtype=_PRECISIONS[precision]).eval()
    tokenizer = open_clip.get_tokenizer(arch)
    preprocess = getattr(model.visual, "preprocess_cfg", {}) or {}
    return LoadedCLIP(
        model=model,
        tokenizer=tokenizer,
        arch=arch,
        pretrained=None if pretrained is None else str(pretrained),
        image_size=_image_size(model),
        mean=tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD)),
        info=info,
    )
