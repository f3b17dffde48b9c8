"""Plugin manager: entry points in group `clipx`, built-ins included.

A plugin that fails to import is recorded in `load_errors` (shown by `clipx plugins` and on
stderr) and skipped; the others keep working. CLIPX_LOAD_PLUGINS selects external plugins:
unset = all, "" = built-ins only, "a,b" = built-ins plus those entry-point or distribution names.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
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


load_errors: list[PluginLoadError] = []
_distributions: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)
_loaded = False


def _dist_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ("unknown", "unknown")
    return (dist.metadata["Name"], dist.version)


def _selected(ep: metadata.EntryPoint, dist_name: str) -> bool:
    if dist_name == BUILTIN_DISTRIBUTION:
        return True
    wanted = os.environ.get("CLIPX_LOAD_PLUGINS")
    if wanted is None:
        return True
    names = {w.strip() for w in wanted.split(",") if w.strip()}
    return ep.name in names or dist_name in names


def load_plugins() -> None:
    """Idempotent: register every selected entry point once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    eps = sorted(
        metadata.entry_points(group=GROUP),
        # built-ins first, so a third party cannot shadow a built-in name
        key=lambda ep: (_dist_of(ep)[0] != BUILTIN_DISTRIBUTION, ep.name),
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
        except Exception as exc:  # a broken plugin must not break the others
            _record(ep.name, dist_name, f"{type(exc).__name__}: {exc}")
            continue
        _distributions[ep.name] = (dist_name, version)


def _record(name: str, dist: str, error: str) -> None:
    load_errors.append(PluginLoadError(name, dist, error))
    print(f"clipx: plugin '{name}' ({dist}) skipped: {error}", file=sys.stderr)


def plugin_info() -> list[dict]:
    """name, distribution, version, hooks - for `clipx plugins`."""
    load_plugins()
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist, version = _distributions.get(name, ("(registered at runtime)", ""))
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        out.append({"name": name, "distribution": dist, "version": version, "hooks": hooks})
    return sorted(out, key=lambda d: d["name"])
