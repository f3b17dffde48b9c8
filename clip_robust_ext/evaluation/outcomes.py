"""Per-sample outcomes: the unit of every comparison, as one compact file per run (samples.npz).

A block is one model, one training seed, one dataset view: the evaluated sample indices, their
labels, and a 0/1 column per outcome - `clean` (clean prediction correct) and one per attack
(`pgd-10@1/255`: clean correct and still correct under that attack; under a cascade, also under
the attacks before it at that budget, like the per-attack numbers of the tables). Metrics:
clean; robust@eps = clean AND every attack of that budget (text attacks count at every budget);
<attack>@eps = that attack's column.

samples.npz (numpy, bit-packed; a run's files are read with `load_outcomes`):
    manifest          JSON: schema, blocks [{label, seed, view, protocol, columns, budgets, ...}]
    b<i>.indices      int64 (n,)   sample index into the dataset split
    b<i>.labels       int64 (n,)   class label (-1: not recorded by the run that made it)
    b<i>.flags        uint8        np.packbits of the (columns, n) bool matrix, axis 1

Sources `load_outcomes` reads: a samples.npz, a folder holding one, a run dir or seed folder
(its eval/ result files), a multi-seed run dir (its seed-*/ folders) or a result card.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ClipxUsageError
from ..utils.io import atomic_write
from . import records as R
from .cards import read_card

SAMPLES_FILE = "samples.npz"
SAMPLES_SCHEMA = "clipx.samples.v1"
# protocol fields that must agree for two blocks to be paired (besides indices and seeds)
PAIRING_FIELDS = (
    "protocol",
    "norm",
    "precision",
    "cascade",
    "protocol_seed",
    "templates",
    "class_names",
)


@dataclass
class Block:
    """One model x seed x view: per-sample outcome columns over the same sample indices."""

    label: str
    seed: int | None
    view: str
    indices: np.ndarray
    labels: np.ndarray
    columns: dict[str, np.ndarray]
    budgets: dict[str, list[str]]  # eps string -> outcome columns of that budget's attacks
    info: dict[str, Any] = field(default_factory=dict)  # protocol fields, fingerprint, classes

    def metric(self, metric: str, eps: str | None) -> np.ndarray:
        """The 0/1 outcome vector of `metric` (clean, robust or an attack label) at budget eps."""
        clean = self.columns["clean"]
        if metric == "clean":
            return clean
        if eps not in self.budgets:
            raise ClipxUsageError(
                f"--eps {eps}: {self.label} on {self.view} has budgets {', '.join(self.budgets)}"
            )
        keys = self.budgets[eps]
        if metric == "robust":
            return np.logical_and.reduce([clean, *(self.columns[k] for k in keys)])
        for key in keys:
            if key in (metric, f"{metric}@{eps}"):
                return clean & self.columns[key]
        names = ", ".join(k.rsplit("@", 1)[0] for k in keys)
        raise ClipxUsageError(f"--metric {metric}: not clean, robust or one of: {names}")


# -- from a run directory ------------------------------------------------------------------------
def _budgets(records: list[dict[str, Any]], attacks: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for rec in records:
        if rec.get("eps") is None:
            continue
        keys = []
        for a in rec.get("attacks") or []:
            key = a["label"] if a.get("eps") is None else f"{a['label']}@{rec['eps_str']}"
            if key not in attacks:
                raise ClipxUsageError(f"{rec['label']}: no per-sample flags for attack {key}")
            keys.append(key)
        out[rec["eps_str"]] = keys
    return out


def _info(rec: dict[str, Any]) -> dict[str, Any]:
    params = rec.get("protocol_params") or {}
    split = rec.get("class_split") or {}
    return {
        "protocol": rec.get("protocol"),
        "norm": rec.get("norm"),
        "precision": rec.get("precision"),
        "cascade": params.get("cascade"),
        "protocol_seed": rec.get("seed"),
        "templates": rec.get("templates"),
        "classes": split.get("classes"),
        "label_space": split.get("label_space"),
        "class_names": split.get("class_names"),
        "fingerprint": (rec.get("model") or {}).get("fingerprint"),
        "attacks": {
            a["label"]: {"name": a.get("name"), "params": a.get("params")}
            for a in rec.get("attacks") or []
        },
    }


def block_from_result(data: dict[str, Any], seed: int | None) -> Block | None:
    """A block from one eval result file (None when it kept no per-sample flags)."""
    samples, records = data.get("samples"), data.get("records") or []
    if not samples or not records or "clean" not in samples:
        return None
    clean = np.array(R.unbits(samples["clean"]), dtype=bool)
    attacks = {k: np.array(R.unbits(v), dtype=bool) for k, v in samples["attacks"].items()}
    labels = samples.get("labels")
    block = Block(
        label=data["label"],
        seed=seed,
        view=data["dataset_key"],
        indices=np.asarray(samples["indices"], dtype=np.int64),
        labels=np.asarray(labels if labels is not None else [-1] * len(clean), dtype=np.int64),
        columns={"clean": clean, **attacks},
        budgets=_budgets(records, attacks),
        info=_info(records[0]),
    )
    check_block(block, records)
    return block


def check_block(block: Block, records: list[dict[str, Any]]) -> None:
    """The outcomes must give back the record's own accuracies (4 decimals), or they are not
    what the tables show."""
    for rec in records:
        eps = rec.get("eps_str") if rec.get("eps") is not None else None
        got = {"clean_acc": block.metric("clean", eps)}
        if eps is not None:
            got["robust_acc"] = block.metric("robust", eps)
        for name, value in got.items():
            pct = round(100.0 * float(value.mean()), 4) if len(value) else float("nan")
            if rec.get(name) is not None and abs(pct - rec[name]) > 1e-3:
                raise ValueError(
                    f"{block.label} {block.view} {eps}: {name} {pct} from the per-sample flags, "
                    f"{rec[name]} in the record"
                )


def run_seed(folder: Path) -> int | None:
    text = (folder / "seed").read_text().strip() if (folder / "seed").is_file() else ""
    if text.lstrip("-").isdigit():
        return int(text)
    m = re.fullmatch(r"seed-(-?\d+)", folder.name)
    return int(m.group(1)) if m else None


def blocks_from_run(run_dir: str | os.PathLike) -> list[Block]:
    """Every block of a run dir: its own eval/ results, or those of its seed-*/ folders."""
    run_dir = Path(run_dir)
    seeds = sorted(
        (p for p in run_dir.glob("seed-*") if p.is_dir()), key=lambda p: run_seed(p) or 0
    )
    folders = seeds if seeds and not R.eval_dir(run_dir).is_dir() else [run_dir]
    out = []
    for folder in folders:
        seed = run_seed(folder)
        for path in sorted(R.eval_dir(folder).glob("*/*/*.json")):
            if ".partial." in path.name:
                continue
            data = R.read_json(path)
            if not data or data.get("schema") != R.SCHEMA:
                continue
            try:
                block = block_from_result(data, seed)
            except (ClipxUsageError, ValueError) as exc:  # say so; the run's tables stand
                print(f"clipx: {path}: per-sample outcomes left out: {exc}", file=sys.stderr)
                continue
            if block is not None:
                out.append(block)
    return out


# -- the file -------------------------------------------------------------------------------------
def write_samples(blocks: list[Block], path: str | os.PathLike) -> Path:
    """samples.npz for these blocks (written atomically)."""
    arrays: dict[str, np.ndarray] = {}
    manifest = []
    for i, b in enumerate(blocks):
        names = list(b.columns)
        matrix = np.stack([b.columns[c] for c in names])
        arrays[f"b{i}.indices"] = b.indices.astype(np.int64)
        arrays[f"b{i}.labels"] = b.labels.astype(np.int64)
        arrays[f"b{i}.flags"] = np.packbits(matrix, axis=1)
        manifest.append(
            {"label": b.label, "seed": b.seed, "view": b.view, "n": int(len(b.indices)),
             "columns": names, "budgets": b.budgets, "info": b.info}
        )  # fmt: skip
    doc = {"schema": SAMPLES_SCHEMA, "blocks": manifest, "metrics": __doc__.split("\n\n")[1]}
    arrays["manifest"] = np.array(json.dumps(doc))
    return atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))


def read_samples(path: str | os.PathLike) -> list[Block]:
    with np.load(path, allow_pickle=False) as z:
        doc = json.loads(str(z["manifest"]))
        if doc.get("schema") != SAMPLES_SCHEMA:
            raise ClipxUsageError(f"{path}: not a clipx samples file ({doc.get('schema')})")
        out = []
        for i, m in enumerate(doc["blocks"]):
            flags = np.unpackbits(z[f"b{i}.flags"], axis=1, count=m["n"]).astype(bool)
            out.append(
                Block(
                    label=m["label"],
                    seed=m["seed"],
                    view=m["view"],
                    indices=z[f"b{i}.indices"],
                    labels=z[f"b{i}.labels"],
                    columns=dict(zip(m["columns"], flags)),
                    budgets=m["budgets"],
                    info=m.get("info") or {},
                )
            )
    return out


def export_run(run_dir: str | os.PathLike) -> Path | None:
    """Write run_dir/samples.npz from the run's results (None when none kept per-sample flags)."""
    blocks = blocks_from_run(run_dir)
    return write_samples(blocks, Path(run_dir) / SAMPLES_FILE) if blocks else None


def load_outcomes(source: str | os.PathLike) -> list[Block]:
    """Blocks from a samples.npz, a folder with one, a run dir / seed folder / multi-seed run,
    or a result card (that card's model only)."""
    path = Path(source)
    if path.is_file() and path.suffix == ".npz":
        return read_samples(path)
    if path.is_file():
        card = read_card(path)
        if card is None:
            raise ClipxUsageError(f"{path}: not a samples.npz, result card or run directory")
        found = load_outcomes(path.parent.parent)
        return [b for b in found if b.label == card["label"]]
    if not path.is_dir():
        raise ClipxUsageError(f"{path}: no such file or directory")
    blocks = blocks_from_run(path)
    if not blocks and (path / SAMPLES_FILE).is_file():
        blocks = read_samples(path / SAMPLES_FILE)
    if not blocks:
        raise ClipxUsageError(f"{path}: no per-sample outcomes (no eval/ results, no samples.npz)")
    return blocks


__all__ = [
    "Block",
    "SAMPLES_FILE",
    "SAMPLES_SCHEMA",
    "blocks_from_run",
    "export_run",
    "load_outcomes",
    "read_samples",
    "run_seed",
    "write_samples",
]
