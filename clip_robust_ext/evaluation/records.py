"""Result records: one JSON file per (model label, protocol, dataset), written atomically.

Layout under a run directory:
    eval/<label>/<protocol>/<dataset_key>.json          finished result (records + per-sample flags)
    eval/<label>/<protocol>/<dataset_key>.partial.*.json finished batches of an interrupted dataset
    eval/eval_log.jsonl                                   one line per dataset computed / skipped

A result file is reused when its `protocol_hash` (protocol settings for that dataset + model
weights fingerprint) matches; otherwise the dataset is recomputed and the file replaced.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..models.checkpoints import model_fingerprint  # noqa: F401 - re-exported
from ..utils.io import append_text, atomic_write_json

SCHEMA = "clipx.eval.v1"
UNITS = "percent"
FORMULAS = {
    "clean_acc": "100 * mean(clean prediction == label)",
    "per_attack[a]": "100 * mean(clean correct AND prediction under attack a == label)",
    "robust_acc": "100 * mean(clean correct AND correct under every attack run) (per-sample worst case)",
    "drop": "clean_acc - robust_acc",
    "asr": "100 * (clean correct AND fooled by some attack) / (clean correct)",
}


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+@" else "-" for c in str(text)) or "_"


def eval_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "eval"


def result_path(run_dir: str | os.PathLike, label: str, protocol: str, key: str) -> Path:
    """Where the record of one (label, protocol, dataset key) lives: eval/<label>/<protocol>/."""
    return eval_dir(run_dir) / safe_name(label) / safe_name(protocol) / f"{key}.json"


def partial_paths(final: Path) -> list[Path]:
    return sorted(final.parent.glob(f"{final.stem}.partial.*.json"))


def partial_path(final: Path, rank: int) -> Path:
    return final.parent / f"{final.stem}.partial.rank{rank}.json"


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object, or None if missing or unreadable (a stale or foreign file is recomputed)."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def write_result(path: Path, payload: dict[str, Any]) -> None:
    """Write one evaluation record atomically (a crash never leaves half a record)."""
    atomic_write_json(path, payload)


def log_event(run_dir: str | os.PathLike, **event: Any) -> None:
    """Append one JSON line to eval/eval_log.jsonl (what was computed, skipped, resumed)."""
    path = eval_dir(run_dir) / "eval_log.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    event = {"time": now(), **event}
    append_text(path, json.dumps(event, default=str) + "\n", sync=True)


def read_log(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = eval_dir(run_dir) / "eval_log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def bits(flags: list[bool] | torch.Tensor) -> str:
    """Per-sample flags as a compact '0110...' string."""
    if isinstance(flags, torch.Tensor):
        flags = flags.tolist()
    return "".join("1" if f else "0" for f in flags)


def unbits(text: str) -> list[bool]:
    return [c == "1" for c in text]


def load_records(
    run_dir: str | os.PathLike, label: str | None = None, protocol: str | None = None
) -> list[dict]:
    """Every record of every finished result file under run_dir/eval (optionally filtered)."""
    out: list[dict] = []
    for path in sorted(eval_dir(run_dir).glob("*/*/*.json")):
        if ".partial." in path.name:
            continue
        data = read_json(path)
        if not data or data.get("schema") != SCHEMA:
            continue
        for rec in data.get("records", []):
            if label is not None and rec.get("label") != label:
                continue
            if protocol is not None and rec.get("protocol") != protocol:
                continue
            out.append(rec)
    return out
