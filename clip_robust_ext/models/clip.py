"""Loading CLIP through open_clip: any architecture + pretrained tag, or a local checkpoint."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch

from ..errors import ClipxError, ClipxUsageError, unknown_name
from . import tiny_towers  # noqa: F401 - registers the timm towers the tiny configs name
from .adapters import load_adapter
from .checkpoints import load_into_clip, read_state_dict
from .hub import CONFIG_NAME, has_schema, hub_cache_dir, model_folder
from .zoo import zoo_plan

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
    adapter: str | os.PathLike | None = None,
    merge_adapter: bool = True,
) -> LoadedCLIP:
    """Build `arch` with open_clip and load weights.

    arch: an open_clip architecture name, or (as open_clip takes) `hf-hub:ORG/NAME` or
    `local-dir:PATH`, whose config and weights come from the hub cache / that folder, or
    `zoo:NAME`, a published robust checkpoint (models/zoo.toml).
    pretrained: None (random init, offline; the folder's weights for a schema name), an open_clip
    tag such as 'openai' (hub download), `hf-hub:ORG/NAME` / `local-dir:PATH` (their weights),
    or a local checkpoint in any format `checkpoints.py` accepts. Weights other than tags are
    read by clipx's safe loader. `config` adds an architecture JSON (e.g.
    ../shared/assets/small_clip/clipx-small-c10.json) before building.
    adapter: a LoRA / first-blocks adapter folder (a path, `local-dir:PATH` or `hf-hub:ORG/NAME`;
    models/adapters.py) put on top; refused unless the loaded weights are the base it names.
    merge_adapter folds LoRA into the weights (a plain open_clip model); False keeps peft layers.
    """
    if config is not None:
        if not Path(config).exists():
            raise ClipxUsageError(f"model config not found: {config}")
        register_model_config(config)
    if precision not in _PRECISIONS:
        raise unknown_name("precision", precision, _PRECISIONS)
    if adapter is not None:
        base = load_clip(arch, pretrained, "cpu", "fp32", config)
        load_adapter(base, adapter, merge=merge_adapter)
        base.model.to(device=device, dtype=_PRECISIONS[precision])
        return base
    if arch.startswith("zoo:"):
        if pretrained is not None:
            raise ClipxUsageError(f"{arch}: a zoo model brings its own weights; drop pretrained")
        return _load_zoo(arch, precision=precision, device=device)
    if has_schema(arch):
        model, info = _build_from_folder(arch, pretrained)
    else:
        if arch not in open_clip.list_models():
            raise unknown_name("open_clip architecture", arch, open_clip.list_models())
        model, info = _build_named(arch, pretrained)
    model = model.to(device=device, dtype=_PRECISIONS[precision]).eval()
    tokenizer = _tokenizer(arch, info)
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


def _load_zoo(name: str, precision: str, device: Any) -> LoadedCLIP:
    """`zoo:NAME`: its hub repo, or its base tag with the published weights on top."""
    plan = zoo_plan(name)
    if "hub" in plan:
        loaded = load_clip(plan["hub"], device=device, precision=precision)
    else:
        loaded = load_clip(plan["arch"], pretrained=plan["base"], precision=precision)
        weights = plan["weights"]
        kind = load_into_clip(loaded.model, read_state_dict(weights), str(weights))
        loaded.model.to(device)
        loaded.info.update(checkpoint=str(weights), checkpoint_format=kind)
    loaded.info["zoo"] = plan["entry"]["name"]
    return loaded


def _is_local_file(pretrained: str | os.PathLike) -> bool:
    return Path(pretrained).exists() or any(
        str(pretrained).endswith(s) for s in (".pt", ".pth", ".bin", ".safetensors")
    )


def _load_file(model: torch.nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    kind = load_into_clip(model, read_state_dict(path), source=str(path))
    return {"checkpoint_format": kind, "checkpoint": str(Path(path).resolve())}


def _build_named(arch: str, pretrained: str | os.PathLike | None) -> tuple[torch.nn.Module, dict]:
    """A built-in architecture with no weights, a local file, a hub repo's weights, or a tag."""
    if pretrained is not None and has_schema(str(pretrained)):
        model = open_clip.create_model(arch, pretrained=None, device="cpu")
        return model, _load_schema_weights(model, str(pretrained))
    if pretrained is not None and _is_local_file(pretrained):
        model = open_clip.create_model(arch, pretrained=None, device="cpu")
        return model, _load_file(model, pretrained)
    # a hub-hosted tag is looked up in the HF cache of the current environment (HF_HOME read now)
    repo = _tag_repo(arch, pretrained)
    try:
        model = open_clip.create_model(
            arch,
            pretrained=pretrained,
            device="cpu",
            cache_dir=str(hub_cache_dir()) if repo else None,
        )
    except Exception as exc:
        hint = (
            f" - hub repo {repo}, cache {hub_cache_dir()}; offline, pass a local checkpoint"
            if repo
            else " - without network access pass a local checkpoint path as pretrained"
        )
        raise ClipxError(
            f"cannot load open_clip weights '{arch}' / '{pretrained}': {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}{hint}"
        ) from None
    return model, {"checkpoint_format": "open_clip-tag" if pretrained else "random-init"}


def _tag_repo(arch: str, tag: str | os.PathLike | None) -> str:
    """The HF hub repo an open_clip pretrained tag downloads from ('' if none / not a hub tag)."""
    if not tag:
        return ""
    return (open_clip.get_pretrained_cfg(arch, str(tag)) or {}).get("hf_hub", "").strip("/")


def _build_from_folder(
    arch: str, pretrained: str | os.PathLike | None
) -> tuple[torch.nn.Module, dict]:
    """`hf-hub:ORG/NAME` / `local-dir:PATH`: open_clip builds the architecture from the folder's
    config (with its preprocessing); clipx loads the folder's weights safely, then `pretrained`."""
    folder = model_folder(arch)
    model = open_clip.create_model(f"local-dir:{folder.folder}", load_weights=False, device="cpu")
    info: dict[str, Any] = {}
    if pretrained is None or folder.weights is not None:
        info = _load_schema_weights(model, arch, folder)
    if pretrained is not None:  # on top: a vision-only release keeps the folder's text tower
        base = info.get("checkpoint")
        info = (
            _load_schema_weights(model, str(pretrained))
            if has_schema(str(pretrained))
            else _load_file(model, pretrained)
        )
        info["base_checkpoint"] = base
    return model, {**info, "folder": str(folder.folder)}


def _load_schema_weights(model: torch.nn.Module, name: str, folder: Any = None) -> dict[str, Any]:
    """Load the weights file of a hub repo / model folder, recording the repo and snapshot."""
    folder = folder or model_folder(name)
    if folder.weights is None:
        raise ClipxUsageError(f"{name}: no weights file beside {folder.folder / CONFIG_NAME}")
    info = _load_file(model, folder.weights)
    if folder.repo:
        info.update(hub_repo=folder.repo, hub_revision=folder.revision)
    return info


def _tokenizer(arch: str, info: dict[str, Any]):
    if not has_schema(arch):
        return open_clip.get_tokenizer(arch)
    text_cfg = json.loads((Path(info["folder"]) / CONFIG_NAME).read_text())["model_cfg"]
    if text_cfg.get("text_cfg", {}).get("hf_tokenizer_name") and info.get("hub_repo"):
        # a HF text tokenizer is named by the config; open_clip fetches it through the hub cache
        return open_clip.get_tokenizer(arch, cache_dir=str(hub_cache_dir()))
    return open_clip.get_tokenizer(f"local-dir:{info['folder']}")
