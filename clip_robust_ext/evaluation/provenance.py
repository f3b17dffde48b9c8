"""Which plugin (and distribution version) supplied each component behind a result.

Records, multi-seed summaries, result cards and leaderboard rows all carry `components`:
the model source and defenses of a label (run_dir/components.json, written by the run), and
the protocol, dataset and attacks of the record (looked up in the registries)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..registry import provenance

COMPONENTS_NAME = "components.json"


def read_components(run_dir: str | Path) -> dict[str, Any]:
    """label -> {model, pretrain?, defense?} as the run recorded them ({} when absent)."""
    try:
        data = json.loads((Path(run_dir) / COMPONENTS_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_components(by_label: dict[str, Any], rec: dict[str, Any]) -> dict[str, Any]:
    """Every component behind one record, each {name, plugin, distribution}."""
    # a model behind a test-time defense has its base model's components, plus the defense
    parts = dict(by_label.get(rec.get("label")) or by_label.get(rec.get("base_label"), {}))
    if isinstance(rec.get("testtime"), dict):
        parts["testtime"] = provenance("testtime", rec["testtime"].get("name"))
    parts["protocol"] = provenance("evaluators", rec.get("protocol"))
    parts["dataset"] = provenance("datasets", rec.get("dataset"))
    if isinstance(rec.get("attacks"), list):
        parts["attacks"] = [provenance("attacks", a.get("name")) for a in rec["attacks"]]
    return {k: v for k, v in parts.items() if v}


def merged_components(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The components of several records (one model's card): datasets and attacks listed once."""
    out: dict[str, Any] = {}
    for comp in parts:
        for key, value in comp.items():
            if key == "dataset":
                out.setdefault("datasets", [])
                if value not in out["datasets"]:
                    out["datasets"].append(value)
            elif key == "attacks":
                out.setdefault("attacks", [])
                out["attacks"] += [a for a in value if a not in out["attacks"]]
            else:
                out.setdefault(key, value)
    return out


def plugin_summary(components: dict[str, Any]) -> str:
    """'clipx-example-plugin 0.2.0, clip-robust-ext 0.9' - the distributions behind a result."""
    found: list[str] = []
    for value in components.values():
        for item in value if isinstance(value, list) else [value]:
            dist = item.get("distribution") if isinstance(item, dict) else None
            if dist and dist not in found:
                found.append(dist)
    return ", ".join(found)
