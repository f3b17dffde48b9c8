"""Typed registries built from the plugin hooks.

Each registry is rebuilt on access (cheap), so a plugin registered with `pm.register` in a test
is visible at once. Each plugin's hook is called on its own: an exception in one plugin or a
name registered twice is recorded in `registry_errors` with its cause, and everything else works.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from .errors import ClipxUsageError, unknown_name
from .plugins import load_plugins, pm, trace

MODALITIES = ("image", "text", "multimodal")


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    obj: Any
    plugin: str
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def modality(self) -> str | None:
        return self.meta.get("modality")


registry_errors: list[dict[str, str]] = []

_KINDS = {
    "models": "register_models",
    "datasets": "register_datasets",
    "templates": "register_templates",
    "attacks": "register_attacks",
    "defenses": "register_defenses",
    "evaluators": "register_evaluators",
    "recipes": "register_recipes",
}
_SINGULAR = {
    "models": "model",
    "datasets": "dataset",
    "templates": "template set",
    "attacks": "attack",
    "defenses": "defense",
    "evaluators": "evaluation protocol",
    "recipes": "recipe",
}


def note_error(kind: str, plugin: str, error: str) -> None:
    """Record a plugin failure once (shown by `clipx plugins` and on stderr)."""
    item = {"kind": kind, "plugin": plugin, "error": error}
    if item not in registry_errors:
        registry_errors.append(item)
        print(f"clipx: plugin '{plugin}': {error}", file=sys.stderr)


_note = note_error


def entries(kind: str) -> dict[str, Entry]:
    """All entries of one kind, name -> Entry, in plugin registration order."""
    if kind not in _KINDS:
        raise ValueError(f"unknown registry kind {kind!r}")
    load_plugins()
    hook = getattr(pm.hook, _KINDS[kind])
    out: dict[str, Entry] = {}
    # get_hookimpls() is in registration order: built-ins (loaded first) win name clashes.
    for impl in hook.get_hookimpls():
        plugin = impl.plugin_name
        collected: list[Entry] = []

        def register(name: str, obj: Any, description: str = "", **meta: Any) -> None:
            if kind == "attacks":
                modality = meta.setdefault("modality", "image")
                if modality not in MODALITIES:
                    raise ValueError(f"attack '{name}': modality must be one of {MODALITIES}")
            collected.append(Entry(kind, name, obj, plugin, description, meta))  # noqa: B023

        try:
            impl.function(register=register)
            trace(
                _KINDS[kind],
                plugin,
                ", ".join(e.name for e in collected[:8]) + (" ..." if len(collected) > 8 else ""),
            )
        except Exception as exc:
            note_error(kind, plugin, f"{_KINDS[kind]} failed: {type(exc).__name__}: {exc}")
            continue
        for entry in collected:
            if entry.name in out:
                note_error(
                    kind,
                    plugin,
                    f"{_SINGULAR[kind]} '{entry.name}' already registered by "
                    f"'{out[entry.name].plugin}'; skipped",
                )
                continue
            out[entry.name] = entry
    return out


def get(kind: str, name: str) -> Entry:
    """One entry; unknown names raise ClipxUsageError with the closest name."""
    if not isinstance(name, str):
        raise ClipxUsageError(f"{_SINGULAR[kind]} name must be a string, got {name!r}")
    all_entries = entries(kind)
    if name not in all_entries:
        raise unknown_name(_SINGULAR[kind], name, all_entries)
    return all_entries[name]


def names(kind: str) -> list[str]:
    return list(entries(kind))
