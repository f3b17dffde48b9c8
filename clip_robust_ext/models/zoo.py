"""The zoo of published robust CLIP checkpoints (zoo.toml): listing, and loading `zoo:NAME`.

Every entry cites the publisher's README/code it was taken from; the reported numbers are the
authors' own, kept exact for comparison. Weights come from the open_clip hub repo, a direct URL,
or a file in a hub repo (downloaded once into the cache); entries published only as a folder to
download by hand say where to put the file.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import tomllib

from ..data.paths import cache_dir
from ..errors import ClipxUsageError, unknown_name
from .hub import hub_file, hub_offline

ZOO_FILE = Path(__file__).with_name("zoo.toml")
PREFIX = "zoo:"
_WHERE = ("hub", "url", "hub_file", "manual_url")


@lru_cache(maxsize=1)
def zoo() -> dict[str, dict[str, Any]]:
    """name -> entry, in file order."""
    entries = tomllib.loads(ZOO_FILE.read_text(encoding="utf-8"))["model"]
    return {e["name"]: e for e in entries}


def zoo_entry(name: str) -> dict[str, Any]:
    name = name.removeprefix(PREFIX)
    if name not in zoo():
        raise unknown_name("zoo model", name, zoo())
    return zoo()[name]


def zoo_rows() -> list[dict[str, Any]]:
    """One row per entry for `clipx models --zoo` (the JSON form keeps every field)."""
    rows = []
    for e in zoo().values():
        reported = ", ".join(
            f"{'clean' if r['eps'] == '0' else r['eps']}: {r['acc']}" for r in e["reported"]
        )
        where = next(f"{k}: {e[k]}" for k in _WHERE if k in e)
        rows.append({**e, "where": where, "numbers": reported or "-", "arch": e.get("arch", "hub")})
    return rows


def zoo_file_path(entry: dict[str, Any]) -> Path:
    """Where a URL / hand-downloaded weights file of `entry` is kept."""

    link = entry.get("url") or entry.get("manual_url", "")
    name = Path(link.split("?")[0]).name if entry.get("url") else "weights.pt"
    return cache_dir() / "zoo" / entry["name"] / name


def zoo_weights(entry: dict[str, Any]) -> Path:
    """The weights file of a non-hub entry: cached, else downloaded (sha256-checked if given)."""
    if "hub_file" in entry:
        repo, filename = entry["hub_file"].split(":", 1)
        return hub_file(repo, filename)
    path = zoo_file_path(entry)
    if not path.is_file():
        if "url" not in entry:
            raise ClipxUsageError(
                f"zoo:{entry['name']}: its publisher gives no direct download; fetch the "
                f"checkpoint from {entry['manual_url']} and save it as {path}"
            )
        _download(entry["url"], path, entry["name"])
    if entry.get("sha256") and _sha256(path) != entry["sha256"]:
        raise ClipxUsageError(f"zoo:{entry['name']}: {path} does not match the published sha256")
    return path


def _download(url: str, path: Path, name: str) -> None:

    if hub_offline():
        raise ClipxUsageError(
            f"zoo:{name}: not downloaded and the hub is offline; fetch {url} and save it as {path}"
        )
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        torch.hub.download_url_to_file(url, str(part), progress=True)
    except Exception as exc:
        part.unlink(missing_ok=True)
        raise ClipxUsageError(
            f"zoo:{name}: cannot download {url} ({type(exc).__name__}); save it as {path}"
        ) from None
    os.replace(part, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def zoo_plan(name: str) -> dict[str, Any]:
    """How to build `zoo:NAME` (models/clip.py loads it): {"entry", "hub"} for a hub repo, else
    {"entry", "arch", "base", "weights"}: the base tag with the published weights on top (format
    detected: full model or vision tower), downloaded or found in the cache."""
    entry = zoo_entry(name)
    if "hub" in entry:
        return {"entry": entry, "hub": f"hf-hub:{entry['hub']}"}
    return {
        "entry": entry,
        "arch": entry["arch"],
        "base": entry.get("base"),
        "weights": zoo_weights(entry),
    }
