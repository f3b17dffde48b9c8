"""Array-job shards of one evaluation (`clipx eval --shard I/N`) and their merge (`eval-merge`).

The work of an evaluation is a list of units (model variant, dataset, batch) in protocol order;
shard I of N takes the I-th contiguous block of it, so a shard touches one or two datasets and
builds few zero-shot heads. Every batch keeps its global id, and attack seeds derive from it
(engine.derive_seed), so a batch gives the same per-sample flags in whichever shard runs it.

Layout: RUN_DIR/shards/<I>-of-<N>/ holds its own lock, one part file per dataset it touched
(eval/<label>/<protocol>/<dataset>.json, resumable through the engine's partial files) and
shard.json (its plan, `complete` once done). The merge takes every shard of RUN_DIR, refuses
missing, unfinished, overlapping or mismatched shards, and writes the finished result files
exactly as one process writes them."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ..errors import ClipxUsageError
from ..utils.io import atomic_write_json
from . import distributed as D
from . import records as R

SCHEMA = "clipx.eval.shard.v1"
MANIFEST = "shard.json"


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' (0 <= I < N) -> (I, N); an array job passes $SLURM_ARRAY_TASK_ID/N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise ClipxUsageError(f"--shard {text!r}: expected I/N, e.g. 0/4 (I from 0 to N-1)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ClipxUsageError(f"--shard {text}: I must be in 0..N-1 and N >= 1")
    return index, count


def shard_dir(run_dir: str | Path, index: int, count: int) -> Path:
    return Path(run_dir) / "shards" / f"{index}-of-{count}"


def variant_labels(label: str, protocol: Any) -> list[str]:
    """The labels one evaluation writes: the model, then the model behind each test-time defense."""
    return [label, *(f"{label}+{spec['label']}" for spec in protocol.testtime)]


def job_batches(protocol: Any) -> list[tuple[str, int]]:
    """(dataset key, number of batches) of every dataset of the protocol, in order."""
    from ..data import sample_indices
    from .engine import open_eval_dataset
    from .protocols import dataset_key

    out = []
    for spec in protocol.datasets:
        n = len(sample_indices(len(open_eval_dataset(spec)), protocol.n_for(spec), protocol.seed))
        out.append((dataset_key(spec), math.ceil(n / protocol.batch_size)))
    return out


def blocks(units: int, count: int) -> list[range]:
    """`units` cut into `count` contiguous blocks whose sizes differ by at most one."""
    return [range(i * units // count, (i + 1) * units // count) for i in range(count)]


class Shard:
    """Which batches shard `index` of `count` evaluates, and how it writes them."""

    SCHEMA = SCHEMA

    def __init__(self, index: int, count: int, label: str, protocol: Any):
        self.index, self.count = index, count
        self.jobs = [
            (lab, key, n)
            for lab in variant_labels(label, protocol)
            for key, n in job_batches(protocol)
        ]
        units = [(lab, key, b) for lab, key, n in self.jobs for b in range(n)]
        mine = [units[u] for u in blocks(len(units), count)[index]]
        self.batches: dict[tuple[str, str], list[int]] = {}
        for lab, key, b in mine:
            self.batches.setdefault((lab, key), []).append(b)

    def assigned(self, label: str, key: str) -> list[int]:
        return self.batches.get((label, key), [])

    def same_batches(self, existing: dict[str, Any], label: str, key: str) -> bool:
        return existing.get("shard") == [self.index, self.count] and existing.get(
            "assigned"
        ) == self.assigned(label, key)

    def manifest(self, request: dict[str, Any], complete: bool) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "shard": [self.index, self.count],
            "complete": complete,
            "jobs": [list(j) for j in self.jobs],
            "assigned": [[lab, key, b] for (lab, key), bs in self.batches.items() for b in bs],
            "request": request,
        }

    def write_part(self, run, part: dict[str, Any], indices, plan, batch_results, fields) -> None:
        """This shard's batches of one dataset (rank 0 writes; the engine's partials go)."""
        if run.rank != 0:
            return
        path, key = part["path"], part["dataset_key"]
        R.write_result(
            path,
            {
                "schema": SCHEMA,
                "protocol_hash": part["protocol_hash"],
                "key": part["key"],
                "label": run.label,
                "protocol": run.protocol.name,
                "dataset_key": key,
                "shard": [self.index, self.count],
                "assigned": self.assigned(run.label, key),
                "indices": list(indices),
                "plan": [{"key": p.key, **p.describe()} for p in plan],
                "batches": batch_results,
                "fields": fields,
            },
        )
        for stale in R.partial_paths(path):
            stale.unlink(missing_ok=True)
        R.log_event(
            run.run_dir,
            event="computed",
            label=run.label,
            dataset=key,
            shard=f"{self.index}/{self.count}",
            batches=len(batch_results),
        )


def evaluate_shard(
    loaded: Any,
    protocol: Any,
    run_dir: Path,
    label: str,
    shard: tuple[int, int],
    request: dict[str, Any],
) -> dict[str, Any]:
    """Evaluate shard (I, N) of `label` under `protocol` into run_dir/shards/I-of-N; returns its
    manifest. Rerunning a shard reuses its finished datasets and the finished batches of the rest."""
    from .engine import evaluate

    where = shard_dir(run_dir, *shard)
    plan = Shard(shard[0], shard[1], label, protocol)
    D.on_main(lambda: atomic_write_json(where / MANIFEST, plan.manifest(request, False)))
    evaluate(loaded, protocol, where, label, progress=False, shard=plan)
    done = plan.manifest(request, True)
    D.on_main(lambda: atomic_write_json(where / MANIFEST, done))
    return done
