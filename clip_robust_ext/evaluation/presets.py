"""`clipx protocols show NAME`: what a protocol preset contains, fully resolved.

Every field of the Protocol, eps written as fractions of 255 where exact, and each attack with
its registered name, the plugin that supplies it, the parameters the preset sets and the
defaults of the ones it leaves out: the spellings a recipe or `--set` can use."""

from __future__ import annotations

import inspect
from typing import Any

from ..params import signature_of
from ..registry import get
from .protocols import eps_label, protocol_from_dict


def _defaults(factory: Any, given: dict[str, Any], from_protocol: set[str]) -> dict[str, Any]:
    """The factory's keyword defaults that `given` does not set and the protocol does not
    supply (eps, norm, seed ...); unset (None) defaults and **kwargs are left out."""
    accepted, _ = signature_of(factory)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    out = {}
    for name in accepted:
        p = params.get(name)
        if name in given or name in from_protocol or p is None or p.default in (p.empty, None):
            continue
        value = p.default
        out[name] = value if isinstance(value, (int, float, str, bool)) else repr(value)
    return out


def _attack(spec: dict[str, Any]) -> dict[str, Any]:
    entry = get("attacks", spec["name"])
    out = {**spec, "modality": entry.modality, "plugin": entry.plugin}
    supplied = {"model", "self", "eps", *entry.protocol_params}
    defaults = _defaults(entry.obj, dict(spec.get("params") or {}), supplied)
    return {**out, "defaults": defaults} if defaults else out


def show_protocol(name: str) -> dict[str, Any]:
    """The preset (or protocol plugin) NAME resolved: every field, attacks in full."""
    doc = protocol_from_dict(name).to_dict()
    doc["eps"] = [eps_label(e) for e in doc["eps"]]
    doc["attacks"] = [_attack(a) for a in doc["attacks"]]
    entry = get("evaluators", name)
    doc["plugin"] = entry.plugin
    return doc
