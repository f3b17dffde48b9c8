"""Cached files checked before reuse: a marker (done.json, meta.json) says a model is finished,
and records the size and sha256 of the file it vouches for, so a file cut short or replaced
after the marker was written is rebuilt instead of loaded (or loaded as garbage)."""

from __future__ import annotations

import hashlib
import os
import zipfile
from typing import Any


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    """What a marker records about the file it vouches for."""
    return {"bytes": os.path.getsize(path), "sha256": sha256_of(path)}


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def damage(path: str | os.PathLike, recorded: Any) -> str | None:
    """Why `path` is not the file a marker recorded (None: it is). A marker written before
    records existed is checked as a torch zip archive (each member's CRC), which a truncated
    torch.save file fails."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if isinstance(recorded, dict) and "sha256" in recorded:
        if size != recorded.get("bytes"):
            return f"is {size} bytes, {recorded.get('bytes')} were written (truncated?)"
        if sha256_of(path) != recorded["sha256"]:
            return "does not match the sha256 recorded when it was written"
        return None
    return _zip_damage(path)


def _zip_damage(path: str | os.PathLike) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"is not a complete torch archive ({exc})"
    return None if bad is None else f"has a corrupt member {bad!r}"
