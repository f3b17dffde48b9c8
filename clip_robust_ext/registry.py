"""Typed registries built from the plugin hooks.

A registry is built once and kept until a plugin is registered, unregistered or reloaded
(`pm.generation` changes). Each plugin's hook is called on its own through pluggy: an exception
in one plugin is recorded in `plugins.registry_errors` with its cause, and everything else works.

Names: a component is found by its name, or by `plugin:name` (the entry-point name of the plugin
that registered it). A built-in keeps its name when a third-party plugin registers the same one
(the other is reachable as `plugin:name`); a name registered by two third-party plugins is
ambiguous: using it is an error naming both qualified forms.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ClipxUsageError, closest, unknown_name
from .params import checked, is_checked, plugin_usage_errors
from .plugin_manager import (
    distribution_of,
    hook_callers,
    is_builtin,
    note_error,
    pm,
    registry_errors,
    trace,
)

MODALITIES = ("image", "text", "multimodal", "retrieval")
FACTORY_KINDS = ("models", "datasets", "attacks", "defenses", "testtime", "evaluators")

# kind -> the hook that fills it
KINDS = {
    "models": "register_models",
    "datasets": "register_datasets",
    "templates": "register_templates",
    "attacks": "register_attacks",
    "defenses": "register_defenses",
    "testtime": "register_testtime_defenses",
    "evaluators": "register_evaluators",
    "recipes": "register_recipes",
}
SINGULAR = {
    "models": "model",
    "datasets": "dataset",
    "templates": "template set",
    "attacks": "attack",
    "defenses": "defense",
    "testtime": "test-time defense",
    "evaluators": "evaluation protocol",
    "recipes": "recipe",
}

__all__ = [
    "KINDS",
    "MODALITIES",
    "SINGULAR",
    "Entry",
    "Registry",
    "entries",
    "get",
    "names",
    "note_error",
    "provenance",
    "registry_errors",
]


@dataclass(frozen=True)
class Entry:
    """One registered component. `modality` is set for attacks (image, text or multimodal);
    `protocol_params` names the protocol settings (norm, seed, backend) an attack takes."""

    kind: str
    name: str
    obj: Any
    plugin: str
    description: str = ""
    modality: str | None = None
    protocol_params: tuple[str, ...] = ()

    @property
    def qualified(self) -> str:
        """`plugin:name`, which names this entry even where another plugin uses `name` too."""
        return f"{self.plugin}:{self.name}"

    @property
    def provenance(self) -> dict[str, str]:
        """What a result record stores about the component: name, plugin, distribution."""
        dist, version = distribution_of(self.plugin)
        return {
            "name": self.name,
            "plugin": self.plugin,
            "distribution": f"{dist} {version}".strip(),
        }

    @property
    def meta(self) -> dict[str, Any]:
        """Deprecated: the typed fields as the dict earlier versions had."""
        out: dict[str, Any] = {}
        if self.modality is not None:
            out["modality"] = self.modality
        if self.protocol_params:
            out["protocol_params"] = self.protocol_params
        return out


class Registry(Mapping[str, Entry]):
    """name -> Entry of one kind. Iterates over the names a user can write unqualified (plus
    the qualified forms of ambiguous ones); looks up `name` and `plugin:name`."""

    def __init__(self, kind: str, found: list[Entry]):
        self.kind = kind
        self.qualified = {e.qualified: e for e in found}
        self.plain: dict[str, Entry] = {}
        self.ambiguous: dict[str, list[Entry]] = {}
        for entry in found:
            self._add(entry)

    def _add(self, entry: Entry) -> None:
        what = SINGULAR[self.kind]
        if entry.name in self.ambiguous:
            self.ambiguous[entry.name].append(entry)
            note_error(
                self.kind,
                entry.plugin,
                f"{what} '{entry.name}' is also registered by other plugins; "
                f"use '{entry.qualified}' for this one",
            )
            return
        held = self.plain.get(entry.name)
        if held is None:
            self.plain[entry.name] = entry
        elif held.plugin == entry.plugin:
            note_error(self.kind, entry.plugin, f"{what} '{entry.name}' registered twice; skipped")
        elif is_builtin(held.plugin) or is_builtin(entry.plugin):
            # the built-in keeps the name whichever registered first (a plugin registered at
            # runtime before the entry points loaded comes first); the other is plugin:name
            builtin, other = (held, entry) if is_builtin(held.plugin) else (entry, held)
            self.plain[entry.name] = builtin
            note_error(
                self.kind,
                other.plugin,
                f"{what} '{entry.name}' already registered by '{builtin.plugin}' (built in); "
                f"this one is '{other.qualified}'",
            )
        else:  # two third-party plugins: neither may take the name silently
            del self.plain[entry.name]
            self.ambiguous[entry.name] = [held, entry]
            note_error(
                self.kind,
                entry.plugin,
                f"{what} '{entry.name}' is also registered by plugin '{held.plugin}'; "
                f"use '{held.qualified}' or '{entry.qualified}'",
            )

    def resolve(self, name: Any) -> Entry:
        """The entry `name` means; ClipxUsageError if unknown (with the closest name) or
        ambiguous (with the qualified forms that resolve it)."""
        what = SINGULAR[self.kind]
        if not isinstance(name, str):
            raise ClipxUsageError(f"{what} name must be a string, got {name!r}")
        if name in self.plain:
            return self.plain[name]
        if name in self.qualified:
            return self.qualified[name]
        if name in self.ambiguous:
            options = [e.qualified for e in self.ambiguous[name]]
            plugins = ", ".join(f"'{e.plugin}'" for e in self.ambiguous[name][:-1])
            plugins += f" and '{self.ambiguous[name][-1].plugin}'"
            raise ClipxUsageError(
                f"{what} '{name}' is registered by plugins {plugins}; "
                f"name one: {', '.join(repr(o) for o in options)}"
            )
        if ":" in name:
            plugin = name.split(":", 1)[0]
            if plugin not in {e.plugin for e in self.qualified.values()}:
                return_hint = closest(name, list(self.qualified))
                raise ClipxUsageError(
                    f"unknown {what} '{name}': no plugin '{plugin}' registers {self.kind}"
                    f"{return_hint}"
                )
            raise unknown_name(what, name, list(self.qualified))
        raise unknown_name(what, name, list(self))

    def shadowed(self) -> list[Entry]:
        """Entries whose plain name a built-in holds: reachable only as `plugin:name`."""
        return [e for e in self.qualified.values() if self.plain.get(e.name) not in (None, e)]

    def listing(self) -> list[tuple[str, Entry]]:
        """(name to write, entry) for every entry: plain names, then qualified forms where a
        name clashes (ambiguous or shadowed by a built-in)."""
        return list(self.items()) + [(e.qualified, e) for e in self.shadowed()]

    def __getitem__(self, name: str) -> Entry:
        return self.resolve(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (
            name in self.plain or name in self.qualified or name in self.ambiguous
        )

    def __iter__(self) -> Iterator[str]:
        yield from self.plain
        for clashing in self.ambiguous.values():
            for entry in clashing:
                yield entry.qualified

    def __len__(self) -> int:
        return len(self.plain) + sum(len(v) for v in self.ambiguous.values())


_cache: dict[str, tuple[int, Registry]] = {}


def check_kind(kind: Any) -> None:
    """An unknown kind is a usage error listing the kinds (a ValueError too, for old callers)."""
    if kind not in KINDS:
        raise UnknownKindError(str(unknown_name("registry kind", str(kind), list(KINDS))))


class UnknownKindError(ClipxUsageError, ValueError):
    """`entries` / `get` with a kind that is not one of KINDS."""


def entries(kind: str) -> Registry:
    """All entries of one kind, name -> Entry, in plugin registration order (built-ins first)."""
    check_kind(kind)
    hook_list = hook_callers(KINDS[kind])  # loads the plugins first
    cached = _cache.get(kind)
    if cached is not None and cached[0] == pm.generation:
        return cached[1]
    found: list[Entry] = []
    for plugin, caller in hook_list:
        collected: list[Entry] = []

        def register(
            name: str,
            obj: Any,
            description: str = "",
            *,
            modality: str | None = None,
            protocol_params: tuple[str, ...] | list[str] = (),
            **unknown: Any,
        ) -> None:
            if unknown:  # reported, not fatal: the component itself is fine
                note_error(
                    kind,
                    plugin,  # noqa: B023
                    f"register({name!r}): unknown keyword(s) {sorted(unknown)} ignored; "
                    "accepted: description, modality, protocol_params",
                )
            if kind == "attacks":
                modality = modality or "image"
                if modality not in MODALITIES:
                    raise ValueError(f"attack '{name}': modality must be one of {MODALITIES}")
            entry = Entry(
                kind,
                name,
                _as_checked(kind, name, obj, plugin),  # noqa: B023
                plugin,  # noqa: B023 - used while this plugin's hook runs
                description,
                modality,
                tuple(protocol_params),
            )
            collected.append(entry)  # noqa: B023

        try:
            caller(register=register)
            trace(
                KINDS[kind],
                plugin,
                ", ".join(e.name for e in collected[:8]) + (" ..." if len(collected) > 8 else ""),
            )
        except Exception as exc:
            note_error(kind, plugin, f"{KINDS[kind]} failed: {type(exc).__name__}: {exc}")
            continue
        found += collected
    registry = Registry(kind, found)
    _cache[kind] = (pm.generation, registry)
    return registry


def _as_checked(kind: str, name: str, obj: Any, plugin: str = "") -> Any:
    """Every registered factory goes through `params.checked`: unknown keyword arguments are
    usage errors naming the closest parameter, whoever calls it (recipes, CLI, Python). A
    third-party factory's own ValueError / TypeError (a bad value) becomes a usage error too."""
    if kind not in FACTORY_KINDS or not callable(obj):
        return obj
    what = f"{SINGULAR[kind]} '{name}'"
    if not is_checked(obj):
        try:
            obj = checked(obj, what)
        except (TypeError, ValueError):  # no signature to check against (some builtins)
            pass
    if plugin and not is_builtin(plugin):
        obj = plugin_usage_errors(obj, f"{what} (plugin '{plugin}')")
    return obj


def get(kind: str, name: str) -> Entry:
    """One entry by `name` or `plugin:name`; unknown or ambiguous names raise ClipxUsageError."""
    check_kind(kind)
    return entries(kind).resolve(name)


def names(kind: str) -> list[str]:
    """Registered names of one registry `kind` (loads the plugins first)."""
    return list(entries(kind))


def provenance(kind: str, name: Any) -> dict[str, str] | None:
    """Name, plugin and distribution of a component, or None if `name` is not (or no longer)
    registered: what result records carry about each component."""
    try:
        return get(kind, name).provenance
    except ClipxUsageError:
        return None
