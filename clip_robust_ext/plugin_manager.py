"""Plugin manager: entry points in group `clipx`, built-ins included. This module owns the
manager, loading, and every plugin error (load errors and hook errors); `registry` builds the
typed registries from it and `cli` adds the commands.

A plugin that fails to import, fails pluggy's validation, or implements a hook that does not
exist is recorded in `load_errors`; a hook that raises, or a name registered twice, is recorded
in `registry_errors` (both shown by `clipx plugins` and on stderr); the others keep working.
`pm.generation` counts registrations, so caches built from the hooks know when to rebuild.
Environment:
- CLIPX_LOAD_PLUGINS selects external plugins: unset = all, "" = built-ins only,
  "a,b" = built-ins plus those entry-point or distribution names (the LLM_LOAD_PLUGINS idea),
  "-a" = all but a (exclusions may follow inclusions: "a,b,-b"); an unknown name is warned about.
- CLIPX_TRACE_PLUGINS=1 prints every hook call to stderr (datasette's DATASETTE_TRACE_PLUGINS).
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import closest

GROUP = "clipx"
BUILTIN_DISTRIBUTION = "clip-robust-ext"


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, counting (un)registrations so registries are rebuilt only then."""

    generation = 0

    def register(self, plugin: object, name: str | None = None) -> str | None:
        self.generation += 1
        return super().register(plugin, name)

    def unregister(self, plugin: object | None = None, name: str | None = None) -> object:
        self.generation += 1
        return super().unregister(plugin, name)


pm = PluginManager(GROUP)
pm.add_hookspecs(hookspecs)


@dataclass
class PluginLoadError:
    name: str
    distribution: str
    error: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


load_errors: list[PluginLoadError] = []
registry_errors: list[dict[str, str]] = []  # {kind, plugin, error}: hooks that failed, clashes
_distributions: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)
_loaded = False
UNNAMED = "(unnamed distribution)"


def _dist_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    """(name, version) of the distribution behind an entry point; metadata without a Name
    (a broken install) must not break loading."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ("unknown", "unknown")
    try:
        name = dist.metadata["Name"]
    except Exception:  # noqa: BLE001 - unreadable metadata
        name = None
    try:
        version = dist.version or "unknown"
    except Exception:  # noqa: BLE001
        version = "unknown"
    return (str(name) if name else UNNAMED, str(version))


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-")


@dataclass(frozen=True)
class Selection:
    """CLIPX_LOAD_PLUGINS parsed: None = every plugin, else the allowed names; minus excluded."""

    allowed: frozenset[str] | None
    excluded: frozenset[str]

    @classmethod
    def from_env(cls) -> Selection:
        wanted = os.environ.get("CLIPX_LOAD_PLUGINS")
        if wanted is None:
            return cls(None, frozenset())
        items = [_canonical(w.strip()) for w in wanted.split(",") if w.strip()]
        allowed = {w for w in items if not w.startswith("-")}
        excluded = {w[1:].strip() for w in items if w.startswith("-")}
        # only exclusions ("-a"): every other plugin stays
        return cls(frozenset(allowed) if allowed or not excluded else None, frozenset(excluded))

    def names(self) -> set[str]:
        return set(self.allowed or ()) | set(self.excluded)

    def admits(self, ep: metadata.EntryPoint, dist_name: str) -> bool:
        if _canonical(dist_name) == BUILTIN_DISTRIBUTION:
            return True
        mine = {_canonical(ep.name), _canonical(dist_name)}
        if mine & self.excluded:
            return False
        return self.allowed is None or bool(mine & self.allowed)


def _warn_unknown_selection(selection: Selection, eps: list[metadata.EntryPoint]) -> None:
    known = {_canonical(ep.name) for ep in eps} | {_canonical(_dist_of(ep)[0]) for ep in eps}
    for name in sorted(selection.names() - known):
        print(
            f"clipx: CLIPX_LOAD_PLUGINS names '{name}', which is no installed clipx plugin"
            f"{closest(name, sorted(known))}",
            file=sys.stderr,
        )


def load_plugins() -> None:
    """Idempotent: register every selected entry point once per process."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    eps = sorted(
        metadata.entry_points(group=GROUP),
        # built-ins first, so a third party cannot shadow a built-in name
        key=lambda ep: (_canonical(_dist_of(ep)[0]) != BUILTIN_DISTRIBUTION, ep.name),
    )
    selection = Selection.from_env()
    _warn_unknown_selection(selection, eps)
    for ep in eps:
        dist_name, version = _dist_of(ep)
        if not selection.admits(ep, dist_name):
            continue
        if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
            if ep.name in _distributions and _distributions[ep.name][0] == dist_name:
                continue  # the same distribution seen twice (e.g. editable + site-packages)
            _record(ep.name, dist_name, f"entry-point name '{ep.name}' is already taken")
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except (Exception, SystemExit) as exc:  # a broken plugin must not break the others
            _record(ep.name, dist_name, f"{type(exc).__name__}: {_one_line(exc)}")
            continue
        _distributions[ep.name] = (dist_name, version)
        _check_hook_names(ep.name, plugin, dist_name)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def _check_hook_names(name: str, plugin: object, dist: str) -> None:
    """A misspelt hook (register_atacks) would silently never run: report it, like check_pending."""
    specs = [n for n in dir(hookspecs) if n.startswith("register_")]
    for attr in dir(plugin):
        if not attr.startswith("register") or attr in specs:
            continue
        if pm.parse_hookimpl_opts(plugin, attr) is None:
            continue
        hint = difflib.get_close_matches(attr, specs, n=1)
        tail = f" (did you mean '{hint[0]}'?)" if hint else ""
        _record(name, dist, f"implements unknown hook '{attr}'{tail}")


def _record(name: str, dist: str, error: str) -> None:
    item = PluginLoadError(name, dist, error)
    if item not in load_errors:
        load_errors.append(item)
        print(f"clipx: plugin '{name}' ({dist}) skipped: {error}", file=sys.stderr)


def reload_plugins() -> None:
    """Forget entry-point plugins and load them again (after `pip install` of a plugin).

    Plugins registered at runtime with `pm.register` stay registered."""
    global _loaded
    for name in list(_distributions):
        if pm.has_plugin(name):
            pm.unregister(name=name)
    _distributions.clear()
    load_errors.clear()
    registry_errors.clear()
    importlib.invalidate_caches()  # importlib.metadata caches path listings
    _loaded = False
    load_plugins()


def note_error(kind: str, plugin: str, error: str) -> None:
    """Record a failure of a plugin's hook once (shown by `clipx plugins` and on stderr)."""
    item = {"kind": kind, "plugin": plugin, "error": error}
    if item not in registry_errors:
        registry_errors.append(item)
        print(f"clipx: plugin '{plugin}': {error}", file=sys.stderr)


def hook_callers(hook_name: str) -> list[tuple[str, Callable[..., Any]]]:
    """(plugin name, caller) for each implementation of a hook, in registration order (built-ins
    first). Each implementation is called on its own, so one plugin's failure can be told from
    another's, and with pluggy's argument rule: only the arguments it names (a subset of the
    spec's), so arguments can be added to a hook without breaking plugins."""
    load_plugins()
    impls = getattr(pm.hook, hook_name).get_hookimpls()
    return [(impl.plugin_name, _caller(impl)) for impl in impls]


def _caller(impl: pluggy.HookImpl) -> Callable[..., Any]:
    def call(**kwargs: Any) -> Any:
        return impl.function(*(kwargs[name] for name in impl.argnames))

    return call


def distribution_of(plugin_name: str) -> tuple[str, str]:
    """(distribution, version) that supplied a plugin; runtime registrations have none."""
    return _distributions.get(plugin_name, ("(registered at runtime)", ""))


def is_builtin(plugin_name: str) -> bool:
    return _canonical(distribution_of(plugin_name)[0]) == BUILTIN_DISTRIBUTION


def trace(hook: str, plugin: str, detail: str = "") -> None:
    """With CLIPX_TRACE_PLUGINS=1, print each hook call (plugin by plugin) to stderr."""
    if os.environ.get("CLIPX_TRACE_PLUGINS", "") not in ("", "0"):
        print(f"clipx trace: {hook} -> {plugin}{': ' + detail if detail else ''}", file=sys.stderr)


def plugin_info() -> list[dict]:
    """name, distribution, version, hooks, builtin - for `clipx plugins`."""
    load_plugins()
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist, version = distribution_of(name)
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        out.append(
            {
                "name": name,
                "distribution": dist,
                "version": version,
                "builtin": _canonical(dist) == BUILTIN_DISTRIBUTION,
                "hooks": hooks,
            }
        )
    return sorted(out, key=lambda d: (not d["builtin"], d["name"]))


def plugin_versions() -> dict[str, str]:
    """plugin name -> 'distribution version', written next to every run's results."""
    return {d["name"]: f"{d['distribution']} {d['version']}".strip() for d in plugin_info()}
