"""Training checkpoints: atomic, complete (exact resume) and loadable with weights_only=True.

A checkpoint holds only tensors, numbers, strings, lists, tuples and dicts, so `torch.load(...,
weights_only=True)` reads it without running code. The RNG states are the one part that needs
converting: Python's and NumPy's generator states are turned into int64 tensors here and back."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ClipxError, ClipxUsageError
from ..models import save_open_clip_checkpoint
from ..utils.io import atomic_torch_save

FORMAT = "clipx-train-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
FINAL_NAME = "final.pt"  # plain open_clip state dict of the trained model


def rng_state_tensors() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as weights_only-safe values."""
    py_version, py_internal, py_gauss = random.getstate()
    np_key, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss": py_gauss,
        },
        "numpy": {
            "key": str(np_key),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state_tensors(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (
            n["key"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain(obj: Any) -> Any:
    """JSON round trip: configs stored in checkpoints stay weights_only-safe."""
    return json.loads(json.dumps(obj, default=str))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomic write (temp file + fsync + rename): a kill never leaves a half-written checkpoint."""
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    return atomic_torch_save(path, state)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint with weights_only=True (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise ClipxUsageError(f"training checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClipxUsageError(
            f"{path}: refused to load - not a plain clipx training checkpoint, and loading it "
            f"would run code ({first}); delete it or choose another --run-dir"
        ) from None
    except Exception as exc:
        raise ClipxError(
            f"{path}: cannot read training checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ClipxUsageError(f"{path}: not a clipx training checkpoint")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise ClipxUsageError(
            f"{path}: checkpoint format {state['format_version']} is newer than this clipx"
        )
    return state


def export_open_clip(source: str | Path | torch.nn.Module, path: str | Path) -> Path:
    """Write plain open_clip weights (`open_clip.create_model(arch, pretrained=path)` loads them)
    from a model, a training checkpoint file, or a run directory holding one."""
    if isinstance(source, torch.nn.Module):
        return save_open_clip_checkpoint(source, path)
    source = Path(source)
    if source.is_dir():
        source = source / CHECKPOINT_NAME
    state = load_checkpoint(source)
    if any(".lora_" in key for key in state["model"]):
        raise ClipxUsageError(
            f"{source}: a LoRA run's training checkpoint (peft layer names); export its final.pt "
            "(merged) or its adapter/ folder (clipx export [--merge-adapter])"
        )
    module = torch.nn.Module()
    module.state_dict = lambda: state["model"]  # type: ignore[method-assign]
    return save_open_clip_checkpoint(module, path)
