"""The one rule for every cache and "already done" marker (docs/CACHES.md): a key covers the
content of every input - files by content hash, folders by a stat fingerprint (+ content when
small), the resolved parameters, and the version and code fingerprint of every plugin that
supplies a component. Keys are dicts of named parts, so a changed input is reported by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import ClipxUsageError
from .plugin_manager import plugin_versions, pm
from .registry import get

CONTENT_LIMIT = 256 * 2**20  # folders up to this many bytes are content-hashed, larger ones by stat
PATH_KEYS = ("root", "path", "checkpoint", "pretrained", "annotations", "classnames", "images")
ENV_ROOTS = ("CLIPX_ASSETS", "CLIPX_DATA")

_file_hashes: dict[tuple, str] = {}  # (path, size, mtime_ns, inode) -> sha256, per process


def digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (memoised per process on its stat, so a file is read once)."""
    path = Path(path).resolve()
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if memo not in _file_hashes:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _file_hashes[memo] = h.hexdigest()[:16]
    return _file_hashes[memo]


def tree_fingerprint(root: str | os.PathLike) -> str:
    """Every file under a folder: relative name, size and mtime; plus content when the folder is
    small (a file rewritten within the mtime granularity, same size, is still caught)."""
    root = Path(root).resolve()
    listing, total = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            try:
                st = p.stat()
            except OSError:
                continue
            listing.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
            total += st.st_size
    parts: dict[str, Any] = {"files": listing}
    if total <= CONTENT_LIMIT:
        parts["content"] = [file_hash(root / rel) for rel, _, _ in listing]
    return digest(parts)


def path_fingerprint(value: Any) -> str | None:
    """The content fingerprint of a file or folder a parameter names; None if it names none."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        return None
    path = Path(value).expanduser()
    try:
        if path.is_file():
            return "file:" + file_hash(path)
        if path.is_dir():
            return "dir:" + tree_fingerprint(path)
    except OSError:
        return None
    return None


def inputs_fingerprint(spec: dict[str, Any] | None) -> dict[str, str]:
    """Fingerprints of the files and folders named by a model or dataset spec."""
    out: dict[str, str] = {}
    for key, value in (spec or {}).items():
        if key in PATH_KEYS:
            fp = path_fingerprint(value)
            if fp is not None:
                out[key] = fp
    return out


def env_roots() -> dict[str, str]:
    """Where registered datasets come from ($CLIPX_ASSETS, $CLIPX_DATA): path and a stat
    fingerprint of their top two levels (a replaced or added archive changes it)."""
    out = {}
    for name in ENV_ROOTS:
        value = os.environ.get(name)
        if not value:
            continue
        root = Path(value).expanduser()
        entries = []
        if root.is_dir():
            for p in sorted(root.iterdir()):
                try:
                    st = p.stat()
                except OSError:
                    continue
                entries.append((p.name, st.st_size, st.st_mtime_ns))
        out[name] = digest([str(root.resolve()), entries])
    return out


def code_fingerprint(obj: Any) -> str:
    """sha256 of the source files of the top-level package (or module) that defines `obj`."""
    name = obj.__name__ if isinstance(obj, ModuleType) else getattr(obj, "__module__", None)
    module = sys.modules.get(name or type(obj).__module__)
    top = sys.modules.get(module.__name__.split(".")[0]) if module is not None else None
    file = getattr(top, "__file__", None)
    if not file:
        return "unknown"
    base = Path(file)
    if base.name == "__init__.py":
        base = base.parent
        files = sorted(p for p in base.rglob("*") if p.suffix in (".py", ".toml", ".json", ".txt"))
    else:
        files = [base]
    return digest([(str(p.relative_to(base.parent)), file_hash(p)) for p in files])


def component_fingerprint(kind: str, name: str) -> dict[str, str]:
    """The plugin that supplies a registered component: its distribution version and code."""

    entry = get(kind, name)
    plugin = pm.get_plugin(entry.plugin)
    return {
        "plugin": entry.plugin,
        "version": plugin_versions().get(entry.plugin, "unknown"),
        "code": code_fingerprint(plugin if plugin is not None else entry.obj),
    }


def changed(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Names of the key parts that differ (dotted one level down), for the 'recomputing' line."""
    if not isinstance(old, dict):
        return ["(no key recorded)"]
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k}.{s}" for s in sorted(set(a) | set(b)) if a.get(s) != b.get(s)]
        else:
            out.append(k)
    return out


def training_key(
    doc: dict[str, Any],
    method: dict[str, Any],
    start: Path | None,
    class_split: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a trained model depends on: the resolved recipe sections it reads, the start
    checkpoint's bytes, the files the model and data specs name, the data roots, the plugins
    that supply the model source, the dataset and the defense, and (`class_split`) the class
    names a split such as `classes = "seen"` resolved to."""
    data = doc.get("data") or {}
    code = {"defense": component_fingerprint("defenses", method["name"])}
    code["model"] = component_fingerprint("models", doc["model"]["source"])
    if data.get("dataset"):
        code["dataset"] = component_fingerprint("datasets", data["dataset"])
    return {
        "params": digest([doc.get("model"), data, method]),
        "start": file_hash(start) if start is not None else None,
        "model_files": inputs_fingerprint(doc.get("model")),
        "data_files": inputs_fingerprint(data),
        "data_roots": env_roots(),
        "code": {k: digest(v) for k, v in code.items()},
        "versions": {k: v["version"] for k, v in code.items()},
        **({"class_split": class_split} if class_split is not None else {}),
    }


def read_key(path: Path) -> dict[str, Any] | None:
    """The `key` recorded in a marker file (done.json, inputs.json); None when the file is
    missing, truncated, or from before keys were recorded."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    key = data.get("key") if isinstance(data, dict) else None
    return key if isinstance(key, dict) else None


def evaluation_key(
    protocol: Any, spec: dict[str, Any], model: str, class_split: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What one dataset's evaluation result depends on besides the protocol settings: the model
    weights (`model`, their hash), the data files and roots, the plugins that supply the
    dataset, the attacks and the protocol, and the class names a split resolved to."""

    code = {"dataset": component_fingerprint("datasets", spec["dataset"])}
    for attack in getattr(protocol, "attacks", []):
        code[f"attack {attack['name']}"] = component_fingerprint("attacks", attack["name"])
    try:
        code["protocol"] = component_fingerprint("evaluators", protocol.name)
    except ClipxUsageError:  # a protocol built in code, not a registered preset
        pass
    return {
        "settings": protocol.dataset_hash(spec),
        "model": model,
        "data_files": inputs_fingerprint(spec),
        "data_roots": env_roots(),
        "code": {k: digest(v) for k, v in code.items()},
        "versions": {k: v["version"] for k, v in code.items()},
        **({"class_split": class_split} if class_split is not None else {}),
    }
