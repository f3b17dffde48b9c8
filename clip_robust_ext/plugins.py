"""Plugin manager: entry points in group `clipx`, built-ins included.

A plugin that fails to import, fails pluggy's validation, or implements a hook that does not
exist is recorded in `load_errors` (shown by `clipx plugins` and on stderr); the others keep
working. Environment:
- CLIPX_LOAD_PLUGINS selects external plugins: unset = all, "" = built-ins only,
  "a,b" = built-ins plus those entry-point or distribution names (the LLM_LOAD_PLUGINS idea).
- CLIPX_TRACE_PLUGINS=1 prints every hook call to stderr (datasette's DATASETTE_TRACE_PLUGINS).
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from dataclasses import asdict, dataclass
from importlib import metadata

import pluggy

from . import hookspecs

GROUP = "clipx"
BUILTIN_DISTRIBUTION = "clip-robust-ext"

pm = pluggy.PluginManager(GROUP)
pm.add_hookspecs(hookspecs)


@dataclass
class PluginLoadError:
    name: str
    distribution: str
    error: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


load_errors: list[PluginLoadError] = []
_distributions: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)
_loaded = False


def _dist_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ("unknown", "unknown")
    # a distribution whose metadata lacks Name (a broken install) must not break every command
    name = dist.metadata["Name"] or f"(unnamed distribution at {getattr(dist, '_path', '?')})"
    return (name, dist.version or "unknown")


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def _selected(ep: metadata.EntryPoint, dist_name: str) -> bool:
    if _canonical(dist_name) == BUILTIN_DISTRIBUTION:
        return True
    wanted = os.environ.get("CLIPX_LOAD_PLUGINS")
    if wanted is None:
        return True
    names = {_canonical(w.strip()) for w in wanted.split(",") if w.strip()}
    return _canonical(ep.name) in names or _canonical(dist_name) in names


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
    for ep in eps:
        dist_name, version = _dist_of(ep)
        if not _selected(ep, dist_name):
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
    from . import registry

    registry.registry_errors.clear()
    importlib.invalidate_caches()  # importlib.metadata caches path listings
    _loaded = False
    load_plugins()


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
        dist, version = _distributions.get(name, ("(registered at runtime)", ""))
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
