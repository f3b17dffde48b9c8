"""`clipx eval-merge RUN_DIR`: the array-job shards of an evaluation (evaluation/shards.py) as
the finished result files one process writes, after checking that the shards fit together:
all present, all finished, one split (no overlap), one model and protocol per dataset."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import ClipxUsageError
from . import records as R
from .shards import MANIFEST, SCHEMA

_NAME = re.compile(r"(\d+)-of-(\d+)")


class _Planned:
    """What summarize() reads of a PlannedAttack, rebuilt from a shard part."""

    def __init__(self, stored: dict[str, Any]):
        self.key = stored["key"]
        self._describe = {k: v for k, v in stored.items() if k != "key"}
        self.label, self.eps = self._describe["label"], self._describe["eps"]

    def describe(self) -> dict[str, Any]:
        return dict(self._describe)


def read_shards(run_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every shard folder's manifest, checked: one N, every index 0..N-1 present and finished."""
    found = []
    for folder in sorted((run_dir / "shards").glob("*-of-*")):
        match = _NAME.fullmatch(folder.name)
        if match:
            found.append(((int(match[1]), int(match[2])), folder, R.read_json(folder / MANIFEST)))
    if not found:
        raise ClipxUsageError(f"{run_dir}: no shards to merge (run clipx eval --shard I/N first)")
    counts = sorted({n for (_, n), _, _ in found})
    if len(counts) > 1:
        raise ClipxUsageError(
            f"{run_dir / 'shards'}: shards of {' and '.join(map(str, counts))}-way splits overlap; "
            "keep the folders of one split"
        )
    count = counts[0]
    missing = sorted(set(range(count)) - {i for (i, _), _, _ in found})
    if missing:
        names = ", ".join(f"{i}/{count}" for i in missing)
        raise ClipxUsageError(f"{run_dir}: missing shards {names} (run clipx eval --shard I/N)")
    unfinished = [f"{i}/{count}" for (i, _), _, m in found if not (m and m.get("complete"))]
    if unfinished:
        raise ClipxUsageError(
            f"{run_dir}: shards {', '.join(unfinished)} have not finished; run them again "
            "(they resume)"
        )
    manifests = [(folder, m) for _, folder, m in found]
    if any(m["jobs"] != manifests[0][1]["jobs"] for _, m in manifests):
        raise ClipxUsageError(
            f"{run_dir}: the shards were run with different datasets or settings; rerun them "
            "with one command line"
        )
    return manifests


def _parts(manifests: list[tuple[Path, dict[str, Any]]], label: str, key: str) -> list[dict]:
    out = []
    for folder, manifest in manifests:
        if not any(lab == label and k == key for lab, k, _ in manifest["assigned"]):
            continue
        protocol = manifest["request"]["protocol_name"]
        part = R.read_json(R.result_path(folder, label, protocol, key))
        if not part or part.get("schema") != SCHEMA:
            raise ClipxUsageError(f"{folder}: the part for {label} / {key} is missing; rerun it")
        out.append(part)
    return out


def merge_job(
    run_dir: Path, manifests: list, label: str, key: str, n_batches: int
) -> list[dict[str, Any]]:
    """One dataset of one label from its parts: the finished result file and its records."""
    from .engine import flatten, result_document, summarize
    from .protocols import protocol_from_dict

    parts = _parts(manifests, label, key)
    batches: dict[str, dict] = {}
    for part in parts:
        for b in part["batches"]:
            if b in batches:
                raise ClipxUsageError(f"{label} / {key}: batch {b} is in two shards (overlap)")
        batches.update(part["batches"])
        if (part["protocol_hash"], part["indices"], part["plan"]) != (
            parts[0]["protocol_hash"],
            parts[0]["indices"],
            parts[0]["plan"],
        ):
            raise ClipxUsageError(
                f"{label} / {key}: the shards evaluated different models or settings "
                "(protocol hashes differ); rerun them with one command line"
            )
    lost = [b for b in range(n_batches) if str(b) not in batches]
    if lost:
        raise ClipxUsageError(f"{label} / {key}: batches {lost[:5]} are in no shard")
    plan = [_Planned(p) for p in parts[0]["plan"]]
    fields = dict(parts[0]["fields"])
    fields["elapsed_s"] = round(sum(p["fields"]["elapsed_s"] for p in parts), 3)
    fields["world_size"] = max(p["fields"]["world_size"] for p in parts)
    fields["computed_at"] = max(p["fields"]["computed_at"] for p in parts)
    fields["shards"] = len(manifests)
    protocol = protocol_from_dict(fields["protocol_params"])
    samples = flatten(batches, plan)
    records = [{**rec, **fields} for rec in summarize(samples, plan, protocol)]
    first = parts[0]
    samples = {"indices": first["indices"], **samples}
    path = R.result_path(run_dir, label, first["protocol"], key)
    R.write_result(
        path, result_document(first["protocol_hash"], first["key"], key, records, samples)
    )
    for stale in R.partial_paths(path):
        stale.unlink(missing_ok=True)
    R.log_event(run_dir, event="merged", label=label, dataset=key, shards=len(manifests))
    return records


def merge_shards(run_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Merge every shard of run_dir; returns (the merged records, the shards' request)."""
    run_dir = Path(run_dir)
    manifests = read_shards(run_dir)
    records: list[dict[str, Any]] = []
    for label, key, n_batches in manifests[0][1]["jobs"]:
        records += merge_job(run_dir, manifests, label, key, n_batches)
    return records, manifests[0][1]["request"]
