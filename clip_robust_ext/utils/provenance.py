"""Provenance stamped on every results artifact: which code (commit, dirty tree), which start
model (its weights' sha256, and whether it is the one the published tables came from), which
packages, which machine (CPU model, threads) and what it cost (CPU and wall seconds).

A table is only reproducible when a reader can tell a changed model from a changed attack; the
start model of a recipe is set once per run (`set_start_model`) and every record and card
written afterwards in the process carries it."""

from __future__ import annotations

import contextvars
import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .io import atomic_write_json, atomic_write_text
from .versions import versions

_START: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "clipx_start_model", default=None
)
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=1)
def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the checkout the package runs from, read once per process when
    this module is imported (the code a process runs is the code it imported, not a later
    commit). None for both outside a git checkout."""

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], cwd=_SOURCE_ROOT, capture_output=True, text=True, timeout=20
        )
        if out.returncode != 0:
            raise OSError(out.stderr.strip())
        return out.stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        changes = [line for line in git("status", "--porcelain").splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "changed_files": None}
    return {"commit": commit, "dirty": bool(changes), "changed_files": len(changes)}


git_state()  # at import: a commit made while a long run is under way is not that run's code


def cpu_model() -> str:
    """The CPU's marketing name (/proc/cpuinfo on Linux, platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU model, logical CPUs, torch's intra-op threads, OS, and the accelerator if any."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "platform": platform.platform(),
        "gpu": gpu,
    }


def set_start_model(info: dict[str, Any] | None) -> None:
    """Record the run's start model (`start_model_info`) for every artifact written after."""
    _START.set(info)


def start_model() -> dict[str, Any] | None:
    return _START.get()


def start_model_info(
    source: str, weights_sha256: str, reference: str | None, origin: str | None = None
) -> dict[str, Any]:
    """The start model's identity; `matches_reference` is None when no published fingerprint
    exists for the source, and a False says on stderr that the numbers will differ."""
    matches = None if reference is None else weights_sha256 == reference
    if matches is False:
        print(
            f"clipx: start model '{source}' has weights sha256 {weights_sha256[:12]}..., not the "
            f"{reference[:12]}... the published tables came from: its numbers will differ",
            file=sys.stderr,
            flush=True,
        )
    return {
        "source": source,
        "weights_sha256": weights_sha256,
        "reference_sha256": reference,
        "matches_reference": matches,
        "origin": origin,
    }


def provenance_stamp(cpu_s: float | None = None, wall_s: float | None = None) -> dict[str, Any]:
    """Everything above in one dict (cost keys only when measured)."""
    out: dict[str, Any] = {
        **git_state(),
        "start_model": start_model(),
        "packages": versions(),
        "machine": machine(),
    }
    if cpu_s is not None:
        out["cpu_s"] = round(cpu_s, 3)
    if wall_s is not None:
        out["wall_s"] = round(wall_s, 3)
    return out


class Clock:
    """CPU seconds (every thread of this process) and wall seconds of a block."""

    def __enter__(self) -> Clock:
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()
        self.cpu_s = self.wall_s = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cpu_s = time.process_time() - self._cpu0
        self.wall_s = time.perf_counter() - self._wall0


def _key(rec: dict[str, Any]) -> tuple[Any, ...]:
    return rec.get("label"), rec.get("dataset_key", rec.get("dataset")), rec.get("eps")


def computed_with(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The distinct commits, start models and machines a set of records was computed with, and
    their summed CPU / wall seconds (one evaluation = one dataset of one model of one seed: its
    records share a stamp, counted once)."""
    once = {(r.get("label"), r.get("dataset_key"), r.get("run_seed")): r for r in records}
    stamps = [r.get("provenance") or {} for r in once.values()]

    def distinct(key: str) -> list[Any]:
        values = [s[key] for s in stamps if s.get(key) is not None]
        return [v for i, v in enumerate(values) if v not in values[:i]]

    return {
        "commits": distinct("commit"),
        "dirty": any(s.get("dirty") for s in stamps),
        "start_models": distinct("start_model"),
        "machines": distinct("machine"),
        "unstamped": sum(1 for s in stamps if not s),
        "cpu_s": round(sum(s.get("cpu_s", 0.0) for s in stamps), 1),
        "wall_s": round(sum(s.get("wall_s", 0.0) for s in stamps), 1),
    }


def stamp_rows(rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict]:
    """Summary rows (one per label, view, eps) each with `provenance`: what its records were
    computed with."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(_key(rec), []).append(rec)
    return [{**row, "provenance": computed_with(groups.get(_key(row), []))} for row in rows]


def stamp_summary(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite run_dir/summary.json with each row's `provenance` (`stamp_rows`)."""
    path = run_dir / "summary.json"
    rows = json.loads(path.read_text())
    atomic_write_json(path, stamp_rows(rows, records))


def run_provenance(
    records: list[dict[str, Any]], training: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A run's provenance.json: this process's stamp, what the records were computed with, and
    the CPU / wall seconds of training (per model) when given."""
    out = provenance_stamp()
    out["computed_with"] = computed_with(records)
    if training is not None:
        out["training"] = training
    return out


def training_costs(run_dir: Path) -> dict[str, Any]:
    """label (seed-<s>/label in a multi-seed run) -> the CPU / wall seconds its done.json
    recorded (cpu_s is absent from models trained before it was recorded)."""
    out: dict[str, Any] = {}
    for done in sorted([*run_dir.glob("*/done.json"), *run_dir.glob("seed-*/*/done.json")]):
        try:
            data = json.loads(done.read_text())
        except (OSError, ValueError):
            continue
        out[str(done.parent.relative_to(run_dir))] = {
            "wall_s": data.get("seconds"),
            "cpu_s": data.get("cpu_s"),
        }
    return out


def write_run_provenance(run_dir: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """run_dir/provenance.json, and its one-line summary appended to run_dir/results.md."""
    prov = run_provenance(records, training_costs(run_dir))
    atomic_write_json(run_dir / "provenance.json", prov)
    md = run_dir / "results.md"
    if md.is_file():
        atomic_write_text(md, md.read_text().rstrip("\n") + "\n\n" + markdown_line(prov) + "\n")
    return prov


def markdown_line(prov: dict[str, Any]) -> str:
    """One line for a results.md: commit, start model, machine and cost."""
    used = prov.get("computed_with", {})
    commits = ", ".join(c[:10] for c in used.get("commits", [])) or "unknown"
    dirty = " (dirty tree)" if used.get("dirty") else ""
    starts = [s for s in used.get("start_models", []) if s]
    start = ", ".join(f"{s['source']} {s['weights_sha256'][:12]}" for s in starts) or "unknown"
    cpus = {m["cpu_model"] for m in used.get("machines", [])} or {prov["machine"]["cpu_model"]}
    cost = f"evaluation {used.get('cpu_s', 0):.0f} CPU s / {used.get('wall_s', 0):.0f} wall s"
    trained = [t for t in prov.get("training", {}).values() if t.get("wall_s") is not None]
    if trained:
        cpu = sum(t.get("cpu_s") or 0.0 for t in trained)
        cost += f", training {cpu:.0f} CPU s / {sum(t['wall_s'] for t in trained):.0f} wall s"
    return (
        f"Provenance: commit {commits}{dirty}; start model {start}; machine {', '.join(sorted(cpus))}"
        f"; {cost} (provenance.json)."
    )
