"""Version stamps written next to every result so numbers can be traced."""

from __future__ import annotations

import platform
from importlib import metadata

_PACKAGES = (
    "clip-robust-ext",
    "torch",
    "torchvision",
    "open_clip_torch",
    "torchattacks",
    "pyautoattack",
    "textattack",
    "transformers",
    "pluggy",
)


def versions() -> dict[str, str]:
    """Python's and the key packages' versions, as every record stores them."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
