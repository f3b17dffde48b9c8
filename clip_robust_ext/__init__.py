"""clipx: attack and defend CLIP, on top of torchattacks, AutoAttack, TextAttack and open_clip.

The public API plugins use. Importing this never touches the network or imports TextAttack."""

from __future__ import annotations

from .errors import AdversarialCheckError, ClipxError, ClipxUsageError
from .hookspecs import hookimpl
from .registry import Entry, entries, get, names

__version__ = "0.1.0"


def __getattr__(name: str):
    # heavy modules (torch, open_clip) load on first use, so `clipx --help` stays quick
    lazy = {
        "ZeroShotClassifier": ("models", "ZeroShotClassifier"),
        "LoadedCLIP": ("models", "LoadedCLIP"),
        "load_clip": ("models", "load_clip"),
        "build_attack": ("attacks", "build_attack"),
        "verify_adversarial": ("attacks", "verify_adversarial"),
        "attack_mode": ("attacks", "attack_mode"),
    }
    if name in lazy:
        import importlib

        module, attr = lazy[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(name)


__all__ = [
    "AdversarialCheckError",
    "ClipxError",
    "ClipxUsageError",
    "Entry",
    "LoadedCLIP",
    "ZeroShotClassifier",
    "attack_mode",
    "build_attack",
    "entries",
    "get",
    "hookimpl",
    "load_clip",
    "names",
    "verify_adversarial",
]
