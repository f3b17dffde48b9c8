"""Parameter scopes on an open_clip model's towers, and adapters as artifacts.

A tower's layout (its stem and its ordered blocks) is found from module names, so LoRA targets and
"first k blocks" mean the same thing on ViT, ModifiedResNet and timm ConvNeXt towers. LoRA itself
is peft's (`inject_adapter_in_model`; nn.MultiheadAttention, Linear and Conv2d layers); peft is
imported only when a LoRA adapter is built, since importing it (it pulls in transformers) took
24 s of CPU under load.

An adapter folder holds `adapter_model.safetensors` (only what the training changed: the LoRA
matrices, or the first blocks' tensors) and `adapter_config.json` (scope, LoRA settings, and the
base model's architecture and weights fingerprint). It loads only onto the base it names.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ClipxUsageError
from ..utils.io import atomic_write_text
from .checkpoints import model_fingerprint
from .hub import HUB_PREFIX, LOCAL_PREFIX, hub_file

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FORMAT = "clipx-adapter"
SCOPE_NAME = "scope.json"  # beside a trained model's final.pt: scope, trainable count, base
TOWERS = ("visual", "text")
# block containers (relative to a tower) and the layers inside a block LoRA targets by default
_BLOCKS = (r"transformer\.resblocks\.\d+", r"layer\d\.\d+", r"trunk\.stages\.\d+\.blocks\.\d+")
_LEAVES = r"mlp\.c_fc|mlp\.c_proj|conv[123]|mlp\.fc1|mlp\.fc2"
# nn.MultiheadAttention's q/k/v projection, adapted as a parameter (peft's target_parameters adds
# W + BA functionally and never writes W). peft's module-level MHA LoRA merges into the frozen
# weights and subtracts back on every forward, which drifts them by float round-off; and
# out_proj cannot be adapted next to in_proj (peft wraps the module once), nor alone (MHA's
# forward reads out_proj.weight directly, bypassing a wrapped out_proj).
_ATTN_PARAM = "attn.in_proj_weight"
# the input embedding ("stem") of each tower type, relative to the tower
_STEMS = (
    "conv1.",  # ViT patch embedding / ResNet stem conv
    "class_embedding",
    "positional_embedding",
    "ln_pre.",
    "conv2.",
    "conv3.",
    "bn1.",
    "bn2.",
    "bn3.",
    "trunk.stem.",  # timm ConvNeXt
    "token_embedding.",  # text
)


def _peft():
    """The peft module, imported on first use (see the module docstring for the cost)."""
    return importlib.import_module("peft")


@dataclass(frozen=True)
class Tower:
    """Where a tower's parameters live: `prefix` ('visual.', 'text.' or '' for open_clip CLIP's
    top-level text transformer) and its block module names in forward order."""

    name: str
    prefix: str
    blocks: tuple[str, ...]

    def owns(self, param_name: str) -> bool:
        if self.prefix:
            return param_name.startswith(self.prefix)
        return not param_name.startswith("visual.")


def tower(model: nn.Module, name: str) -> Tower:
    """The layout of `name` ('visual' or 'text') in an open_clip model."""
    if name not in TOWERS:
        raise ClipxUsageError(f"tower must be one of {TOWERS}, got {name!r}")
    if name == "visual":
        prefix = "visual."
    else:
        prefix = "text." if hasattr(model, "text") else ""
    pattern = re.compile(re.escape(prefix) + "(?:" + "|".join(_BLOCKS) + ")")
    blocks = [n for n, _ in model.named_modules() if pattern.fullmatch(n)]
    return Tower(name, prefix, tuple(blocks))


def towers_of(spec: str) -> tuple[str, ...]:
    """`trainable` (visual | text | both) -> the towers a scope applies to."""
    return {"visual": ("visual",), "text": ("text",), "both": TOWERS}[spec]


def first_blocks_names(model: nn.Module, towers: tuple[str, ...], k: int) -> list[str]:
    """Parameter names of the stem plus the first k blocks of each tower."""
    names: list[str] = []
    for t in (tower(model, n) for n in towers):
        if len(t.blocks) < k:
            raise ClipxUsageError(
                f"first_blocks = {k}: the {t.name} tower has {len(t.blocks)} blocks"
            )
        heads = tuple(f"{t.prefix}{s}" for s in _STEMS) + tuple(f"{b}." for b in t.blocks[:k])
        names += [n for n, _ in model.named_parameters() if t.owns(n) and n.startswith(heads)]
    return names


def default_lora_targets(model: nn.Module, towers: tuple[str, ...]) -> tuple[str, list[str]]:
    """(a regex over full module names, parameter names) peft adapts by default: ViT blocks'
    MLP projections and attention q/k/v (in_proj_weight), the 1x1/3x3 convs of ResNet
    bottlenecks, ConvNeXt block MLPs."""
    parts, params = [], []
    names = [n for n, _ in model.named_parameters()]
    for t in (tower(model, n) for n in towers):
        if not t.blocks:
            raise ClipxUsageError(
                f"lora: no default targets for the {t.name} tower ({type(model).__name__}); "
                "name them with lora_targets (a regex over module names)"
            )
        parts.append(re.escape(t.prefix) + f"(?:{'|'.join(_BLOCKS)})\\.(?:{_LEAVES})")
        params += [n for b in t.blocks for n in names if n == f"{b}.{_ATTN_PARAM}"]
    return "|".join(parts), params


def lora_config(settings: dict[str, Any]) -> Any:
    return _peft().LoraConfig(
        r=settings["rank"],
        lora_alpha=settings["alpha"],
        lora_dropout=settings["dropout"],
        target_modules=settings["targets"],
        target_parameters=settings.get("target_parameters") or None,
    )


def inject_lora(model: nn.Module, settings: dict[str, Any]) -> list[str]:
    """Add LoRA adapters in place (B = 0, so the model's outputs are unchanged); returns the
    adapter parameter names."""
    config = lora_config(settings)
    try:
        _peft().inject_adapter_in_model(config, model)
    except ValueError as exc:  # peft: no module matched the targets
        raise ClipxUsageError(f"lora_targets {settings['targets']!r}: {exc}") from None
    return [n for n, _ in model.named_parameters() if ".lora_" in n]


def has_lora(model: nn.Module) -> bool:
    return any(".lora_" in n for n, _ in model.named_parameters())


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base layer and put the base layer back (peft's
    unload-and-merge, done on a bare model): the state dict is open_clip's again."""
    tuners = _peft().tuners.tuners_utils.BaseTunerLayer
    names = {n for n, m in model.named_modules() if isinstance(m, tuners)}
    for name in sorted(names):
        if any(name.startswith(f"{other}.") for other in names):
            continue  # inside another tuner layer (MHA's out_proj): merged with its parent
        module = model.get_submodule(name)
        if hasattr(module, "unload_and_optionally_merge_module"):
            base = module.unload_and_optionally_merge_module(
                merge=True, safe_merge=False, adapter_names=None
            )
        else:
            module.merge()
            base = module.get_base_layer()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, base)
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def adapter_tensors(model: nn.Module, scope: str, names: list[str]) -> dict[str, torch.Tensor]:
    """What a scope changed: peft's LoRA state dict, or the named (first-block) tensors."""
    if scope == "lora":
        state = _peft().get_peft_model_state_dict(model)
    else:
        params = dict(model.named_parameters())
        state = {n: params[n] for n in names}
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def save_adapter(folder: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """adapter_model.safetensors + adapter_config.json in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / ADAPTER_WEIGHTS))
    doc = {"format": ADAPTER_FORMAT, "version": 1, **meta}
    atomic_write_text(folder / ADAPTER_CONFIG, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return folder


def adapter_files(source: str | os.PathLike) -> tuple[Path, Path]:
    """(config, weights) of an adapter folder: a path, `local-dir:PATH` or `hf-hub:ORG/NAME`
    (read from the Hugging Face cache, offline as models/hub.py resolves model folders)."""
    text = str(source)
    if text.startswith(HUB_PREFIX):
        repo = text[len(HUB_PREFIX) :]
        return hub_file(repo, ADAPTER_CONFIG), hub_file(repo, ADAPTER_WEIGHTS)
    folder = Path(text[len(LOCAL_PREFIX) :] if text.startswith(LOCAL_PREFIX) else text)
    folder = folder.expanduser()
    if folder.is_file() and folder.name == ADAPTER_CONFIG:
        folder = folder.parent
    config, weights = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not config.is_file() or not weights.is_file():
        raise ClipxUsageError(
            f"adapter {source}: expected {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} in {folder}"
        )
    return config, weights


def read_adapter_config(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ClipxUsageError(f"adapter config {path}: unreadable ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != ADAPTER_FORMAT:
        raise ClipxUsageError(f"{path}: not a clipx adapter config (format {ADAPTER_FORMAT!r})")
    if doc.get("scope") not in ("lora", "first-blocks"):
        raise ClipxUsageError(f"{path}: unknown adapter scope {doc.get('scope')!r}")
    return doc


def attach_adapter(model: nn.Module, source: str | os.PathLike, merge: bool = True) -> dict:
    """Load an adapter onto `model` in place, after checking that `model` is the adapter's base
    (its weights fingerprint); merge=True folds LoRA into the weights. Returns the config."""
    config_path, weights_path = adapter_files(source)
    doc = read_adapter_config(config_path)
    base = doc.get("base", {})
    found = model_fingerprint(model)
    if base.get("fingerprint") != found:
        raise ClipxUsageError(
            f"adapter {source} was trained on base {base.get('arch')} with weights fingerprint "
            f"{base.get('fingerprint')}; this model's is {found} - load it onto that base model"
        )
    tensors = load_file(str(weights_path))
    if doc["scope"] == "lora":
        _load_lora(model, doc, tensors, merge)
    else:
        _load_blocks(model, tensors, source)
    return doc


def _load_lora(model: nn.Module, doc: dict, tensors: dict[str, torch.Tensor], merge: bool):
    inject_lora(model, doc["lora"])
    result = _peft().set_peft_model_state_dict(model, tensors)
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing or result.unexpected_keys:
        raise ClipxUsageError(
            f"adapter does not fit the model: missing {missing[:3]}, "
            f"unexpected {list(result.unexpected_keys)[:3]}"
        )
    if merge:
        merge_lora(model)


def _load_blocks(model: nn.Module, tensors: dict[str, torch.Tensor], source: Any) -> None:
    params = dict(model.named_parameters())
    unknown = [k for k in tensors if k not in params or params[k].shape != tensors[k].shape]
    if unknown:
        raise ClipxUsageError(f"adapter {source}: tensors the model lacks: {unknown[:3]}")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


def load_adapter(loaded: Any, source: str | os.PathLike, merge: bool = True) -> Any:
    """attach_adapter on a LoadedCLIP, recording the adapter and its scope in loaded.info."""
    doc = attach_adapter(loaded.model, source, merge=merge)
    keys = ("scope", "towers", "trainable_params", "lora", "first_blocks")
    loaded.info["scope"] = {
        **{k: doc[k] for k in keys if k in doc},
        "base_fingerprint": doc["base"]["fingerprint"],
        "adapter": str(source),
        "merged": bool(merge),
    }
    return loaded


def read_scope(model_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The scope record a training run wrote beside its final.pt (None for older runs)."""
    path = Path(model_dir) / SCOPE_NAME
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None
