"""clipx: attack and defend CLIP, on top of torchattacks, AutoAttack, TextAttack and open_clip.

Re-exports the plugin API (`clip_robust_ext.api`, documented in docs/PLUGINS.md): every name
there is also `clip_robust_ext.<name>`. Importing this never touches the network or imports
TextAttack; torch and open_clip load on first use of a name that needs them."""

from __future__ import annotations

from . import api
from .errors import AdversarialCheckError, ClipxError, ClipxUsageError
from .hookspecs import hookimpl
from .registry import Entry, entries, get, names
from .utils.lazy import lazy_exports

__version__ = "0.1.0"


# the API's heavy names (torch, open_clip) load on first use, so `clipx --help` stays quick
__getattr__ = lazy_exports(__name__, dict.fromkeys(api.__all__, ".api"))

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
