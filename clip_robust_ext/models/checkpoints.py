"""Safe loading of the checkpoint formats robust-CLIP papers publish.

Formats accepted (all loaded with weights_only=True or safetensors, never executing code):
- full open_clip state dict (`visual.*`, `transformer.*`, `logit_scale`, ...);
- a dict holding it under `state_dict` / `model` / `model_state_dict` (optionally `module.` prefixed);
- a vision-tower-only state dict (TeCoA / FARE releases; keys without the `visual.` prefix, or under
  `vision_encoder_state_dict`), loaded into `model.visual`;
- `.safetensors` files of any of the above;
- any of the above with a learned prompt context (`prompt_context.*`, models/prompts.py): a context
  of the checkpoint's shape is attached to the model before loading.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import ClipxUsageError
from ..utils.io import atomic_torch_save, atomic_write
from .prompts import adopt_prompt_context

# integer buffers, not weights: masks, BatchNorm counters, a prompt context's class names
_NOT_WEIGHTS = ("attn_mask", "num_batches_tracked", "class_names_utf8")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "vision_encoder_state_dict")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a checkpoint file without executing any code."""
    path = Path(path)
    if not path.is_file():
        raise ClipxUsageError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise ClipxUsageError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClipxUsageError(
            f"{path}: refused to load - the file is not a plain tensor checkpoint and loading it "
            f"would run code ({first}); convert it to safetensors or a weights-only state dict"
        ) from None
    except Exception as exc:
        raise ClipxUsageError(
            f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], dict):
                inner = unwrap_state_dict(obj[key], source)
                if key == "vision_encoder_state_dict":
                    inner = {
                        k if k.startswith("visual.") else f"visual.{k}": v for k, v in inner.items()
                    }
                return inner
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            if all(k.startswith("module.") for k in tensors):
                tensors = {k[len("module.") :]: v for k, v in tensors.items()}
            return tensors
    raise ClipxUsageError(f"{source}: no state dict found (expected a dict of tensors)")


def load_into_clip(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> str:
    """Load a full or vision-only state dict; returns 'full' or 'visual'. Mismatches are named."""

    adopt_prompt_context(model, state)
    model_keys = set(model.state_dict())
    visual_keys = {k[len("visual.") :] for k in model_keys if k.startswith("visual.")}
    keys = set(state)
    prefixed_visual = {f"visual.{k}" for k in visual_keys}
    # bare vision keys (conv1.weight, positional_embedding, proj ...) partly collide with full-model
    # keys, so decide by which key set the checkpoint overlaps most
    n_full, n_bare = len(keys & model_keys), len(keys & visual_keys)
    if keys and keys <= prefixed_visual:
        target, kind, expected = model.visual, "visual", visual_keys
        state = {k[len("visual.") :]: v for k, v in state.items()}
    elif n_full and n_full >= n_bare:
        target, kind, expected = model, "full", model_keys
    elif n_bare:
        target, kind, expected = model.visual, "visual", visual_keys
    else:
        raise ClipxUsageError(
            f"{source}: none of its {len(keys)} keys match this architecture "
            f"(e.g. {sorted(keys)[:3]} vs expected {sorted(model_keys)[:3]})"
        )
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if kind == "full":
        # checkpoints from older open_clip versions may miss buffers such as attn_mask
        missing = [k for k in missing if not k.endswith("attn_mask")]
    shape_errors = [
        f"{k}: {tuple(v.shape)} vs {tuple(target.state_dict()[k].shape)}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(target.state_dict()[k].shape)
    ]
    if missing or unexpected or shape_errors:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
        if shape_errors:
            parts.append(f"shape mismatch {shape_errors[:3]}")
        raise ClipxUsageError(
            f"{source}: checkpoint does not fit this architecture: " + "; ".join(parts)
        )
    check_weights({k: v for k, v in state.items() if k in expected}, source)
    target.load_state_dict(state, strict=False)
    return kind


def save_open_clip_checkpoint(model: torch.nn.Module, path: str | Path) -> Path:
    """Plain open_clip format: `open_clip.create_model(arch, pretrained=path)` loads it."""

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        return atomic_write(path, lambda fh: fh.write(save(state)))
    return atomic_torch_save(path, state)


def check_weights(tensors: Any, where: str) -> None:
    """Floating, finite weights: argmax and sign of NaN are 0, so a NaN/inf or integer model
    would be scored as if it were a model. `tensors` is a state dict or (name, tensor) pairs."""
    import torch

    items = tensors.items() if isinstance(tensors, dict) else tensors
    for name, t in items:
        if not isinstance(t, torch.Tensor) or name.endswith(_NOT_WEIGHTS):
            continue
        if not (t.is_floating_point() or t.is_complex()):
            raise ClipxUsageError(
                f"{where}: weight '{name}' is {str(t.dtype).replace('torch.', '')}, not floating "
                "point (quantized checkpoints are not supported; dequantize it first)"
            )
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ClipxUsageError(
                f"{where}: weight '{name}' has {bad} non-finite value(s) (NaN or inf); the "
                "checkpoint is broken (a diverged training run?)"
            )


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the weights (names, shapes, dtypes, values): a retrained model is not reused."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.dtype == torch.bfloat16:
            t = t.float()
        # hash the array's buffer: .tobytes() copied every weight first (97 MiB transient for
        # ViT-B/32's token embedding, ~20% of the time; benchmarks/); same digest
        h.update(t.cpu().contiguous().numpy())
    return h.hexdigest()[:16]
