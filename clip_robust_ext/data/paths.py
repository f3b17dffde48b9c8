"""Where data, shared assets and caches live: environment settings, never hard-coded paths."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ClipxUsageError


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Explicit root, else $CLIPX_DATA, else ~/.cache/clipx/data."""
    if root is not None:
        return Path(root).expanduser()
    return Path(
        os.environ.get("CLIPX_DATA", Path.home() / ".cache" / "clipx" / "data")
    ).expanduser()


def cache_dir() -> Path:
    """$CLIPX_CACHE, else ~/.cache/clipx (pre-trained small CLIPs, text-attack caches)."""
    path = Path(os.environ.get("CLIPX_CACHE", Path.home() / ".cache" / "clipx")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def assets_dir(required: bool = True) -> Path | None:
    """$CLIPX_ASSETS: the offline asset folder (CIFAR-10 JPEG tars, small CLIP, NLTK data)."""
    value = os.environ.get("CLIPX_ASSETS")
    if not value:
        if required:
            raise ClipxUsageError(
                "CLIPX_ASSETS is not set: point it at the folder holding cifar10_*_jpegs.tar.gz and "
                "small_clip/ (e.g. export CLIPX_ASSETS=../shared/assets)"
            )
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ClipxUsageError(f"CLIPX_ASSETS={value} is not a directory")
    return path
