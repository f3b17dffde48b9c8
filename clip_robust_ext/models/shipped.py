"""Start models whose weights the package fixes, so every machine starts from the same model.

Offline pre-training (training/pretrain.py) is deterministic on one machine but not across
CPUs: float rounding differs with the CPU's kernels and thread count, so two machines built
different `procedural-small` weights from the same content key. The package therefore ships the
weights its published tables came from (models/weights/<name>.safetensors) with a record
(<name>.json: the content key they answer, their sha256, how they were produced), used whenever
the content key matches; a changed recipe or pre-training code changes the key and pre-trains
here as before. A record without weights (clipx-small-c10, loaded from $CLIPX_ASSETS) only
states the fingerprint the tables came from.

Re-make a record after changing the pre-training: python -m clip_robust_ext.training.ship"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# model-table keys that do not change the weights (a spec with any other key is another model)
_NEUTRAL_KEYS = {"source", "device", "precision"}


def record(name: str) -> dict[str, Any] | None:
    """models/weights/<name>.json, or None."""
    path = WEIGHTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def shipped_weights(name: str, key: str) -> Path | None:
    """The shipped weights of `name` when they were made for content key `key`."""
    rec = record(name)
    path = WEIGHTS_DIR / f"{name}.safetensors"
    if rec is None or rec.get("key") != key or not path.is_file():
        return None
    return path


def reference_sha256(spec: dict[str, Any]) -> str | None:
    """The weights sha256 the published tables of model table `spec` came from (None: no
    record, or the spec changes the model, e.g. an override of pre-training options)."""
    source = str(spec.get("source", ""))
    if not source or set(spec) - _NEUTRAL_KEYS:
        return None
    rec = record(source)
    return rec.get("weights_sha256") if rec else None
