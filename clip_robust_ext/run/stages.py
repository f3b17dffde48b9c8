"""The recipe stages: pretrain -> defend -> evaluate, resumable, one run dir per run (and one
per seed of a multi-seed recipe). The run-directory layout: run/layout.py."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..cachekeys import changed, read_key, training_key
from ..data.splits import restricts
from ..errors import ClipxUsageError
from ..evaluation import protocol_from_dict
from ..evaluation.cards import weights_sha256
from ..evaluation.engine import open_eval_dataset
from ..evaluation.protocols import dataset_key
from ..evaluation.spread import write_seed_summary
from ..models.shipped import reference_sha256
from ..plugin_manager import plugin_versions
from ..recipes import ResolvedRecipe, resolve
from ..training import distributed as D
from ..training.checkpoint import FINAL_NAME
from ..training.trainer import train
from ..utils import provenance as P
from ..utils.devices import resolve_device
from ..utils.integrity import damage, file_record
from ..utils.io import atomic_write_json, atomic_write_text, read_json_object
from ..utils.log import log
from ..utils.versions import versions
from .builders import build_dataset, build_defense, build_model, load_weights, train_config
from .layout import START_LABEL
from .lock import RunLock, check_writable
from .records import (
    RunResult,
    evaluate_loaded,
    note_components,
    recipe_components,
    with_components,
    write_results,
)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{prefix}.{i}")]
    return [] if a == b else [prefix or "(root)"]


def _check_same_recipe(run_dir: Path, resolved: ResolvedRecipe) -> None:
    path = run_dir / "recipe.resolved.json"
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ClipxUsageError(f"{path} is unreadable; choose another --run-dir") from None
    changed = [k for k in _diff(previous, resolved.doc) if k != "recipe.description"]
    if changed:
        raise ClipxUsageError(
            f"{run_dir} holds a run of a different recipe (differs at {', '.join(changed[:5])}); "
            "choose another --run-dir"
        )


def _write_run_files(run_dir: Path, resolved: ResolvedRecipe) -> None:

    note_components(run_dir, recipe_components(resolved.doc))
    atomic_write_json(run_dir / "recipe.resolved.json", resolved.doc)
    atomic_write_text(run_dir / "recipe.resolved.toml", resolved.to_toml())
    atomic_write_json(
        run_dir / "versions.json", {"packages": versions(), "plugins": plugin_versions()}
    )
    atomic_write_text(run_dir / "seed", f"{resolved.seed}\n")


def _train_one(
    resolved: ResolvedRecipe,
    method: dict[str, Any],
    start_ckpt: Path | None,
    run_dir: Path,
    device: Any,
    prepared: dict[str, Any],
) -> Path:
    """Train one method from the start model; returns its open_clip checkpoint (final.pt)."""

    label = method["label"]
    out = run_dir / label
    done = out / "done.json"
    key = training_key(resolved.doc, method, start_ckpt, class_split_of(resolved, prepared))
    final = out / FINAL_NAME
    if done.is_file() and final.is_file() and read_key(done) == key:
        broken = damage(final, read_json_object(done).get("final"))
        if not broken:
            log(f"{label}: already trained ({final})")
            return final
        log(f"{label}: {final} {broken}; writing it again")
        if prepared["main"]:
            done.unlink(missing_ok=True)
    if prepared["main"]:
        _set_aside_if_stale(out, key)
        atomic_write_json(out / "inputs.json", {"key": key})
    log(f"{label}: training defense '{method['name']}' into {out}")
    loaded = build_model(resolved.doc["model"], device, seed=resolved.seed)
    if start_ckpt is not None:
        load_weights(loaded, start_ckpt)
    dataset, classnames, templates = prepared["data"]
    started, cpu_started = time.perf_counter(), time.process_time()
    train(
        loaded,
        prepared["defenses"][label],
        dataset,
        prepared["configs"][label],
        out,
        classnames=classnames,
        templates=templates,
        resume=True,
    )
    if prepared["main"]:
        atomic_write_json(
            done,
            {
                "key": key,
                "checkpoint": str(final),
                "final": file_record(final),  # checked before every reuse
                "seconds": round(time.perf_counter() - started, 2),
                "cpu_s": round(time.process_time() - cpu_started, 2),
            },
        )
    return final


def _set_aside_if_stale(out: Path, key: dict[str, Any]) -> None:
    """A model folder trained (or started) from other inputs is moved to <label>.stale-N (kept,
    never resumed from), and the run says which inputs changed."""

    previous = read_key(out / "done.json") or read_key(out / "inputs.json")
    if not out.exists() or previous == key:
        return
    if previous is None and not (out / "done.json").exists() and not (out / "final.pt").exists():
        return  # an interrupted run from before keys were recorded: the trainer checks it
    n = 1
    while out.with_name(f"{out.name}.stale-{n}").exists():
        n += 1
    aside = out.with_name(f"{out.name}.stale-{n}")
    out.rename(aside)
    log(
        f"{out.name}: inputs changed ({', '.join(changed(previous, key)[:6])}); retraining (the earlier model is kept in {aside})"
    )


def _trained_earlier(
    resolved: ResolvedRecipe, method: dict[str, Any], start: Path | None, run_dir: Path
) -> Path | None:
    """final.pt of a model an earlier run trained from the same inputs (stages without it)."""

    done = run_dir / method["label"] / "done.json"
    if not done.is_file():
        return None
    previous = read_key(done)
    key = training_key(resolved.doc, method, start, class_split_of(resolved))
    if previous != key:
        raise ClipxUsageError(
            f"{method['label']}: the model in {done.parent} was trained from other inputs "
            f"({', '.join(changed(previous, key)[:6])}); run the stage that trains it again"
        )
    final = done.parent / "final.pt"
    broken = damage(final, read_json_object(done).get("final"))
    if broken:
        raise ClipxUsageError(
            f"{method['label']}: {final} {broken}; run the stage that trains it again"
        )
    return final


def class_split_of(resolved: ResolvedRecipe, prepared: dict[str, Any] | None = None):
    """The class names `[data] classes = ...` resolved to (None without a class split): part of
    the training key, so a changed split declaration retrains instead of reusing a model."""

    spec = resolved.doc.get("data") or {}
    if not restricts(spec):
        return None
    data = (prepared or {}).get("data") or build_dataset(spec, resolved.seed)
    dataset = data[0]
    return getattr(dataset, "description", None) or dataset.dataset.description


def _prepare(resolved: ResolvedRecipe) -> dict[str, Any]:
    """Build everything cheap up front (data, defenses, configs, protocol), so bad values fail
    before hours of training, not after."""
    prepared: dict[str, Any] = {"defenses": {}, "configs": {}, "main": True}
    doc = resolved.doc
    trained = ([doc["pretrain"]] if "pretrain" in resolved.stages else []) + (
        resolved.methods if "defend" in resolved.stages else []
    )
    if trained:
        prepared["data"] = build_dataset(doc["data"], resolved.seed)
    for method in trained:
        prepared["defenses"][method["label"]] = build_defense(method)
        prepared["configs"][method["label"]] = train_config(method)
    if "evaluate" in resolved.stages:
        prepared["protocol"] = protocol = protocol_from_dict(doc["evaluate"])
        if trained and getattr(protocol, "evaluate_with", None) is None:
            _check_eval_datasets(protocol)
    return prepared


def _check_eval_datasets(protocol: Any) -> None:
    """Open every evaluation dataset before training, so a missing folder or an empty dataset
    fails now rather than after hours of training (the engine caches what it opened)."""

    for spec in protocol.datasets:
        ds = open_eval_dataset(spec)
        if len(ds) == 0:
            raise ClipxUsageError(
                f"evaluate: dataset '{spec['dataset']}' ({dataset_key(spec)}) is empty: 0 samples"
            )


def run_recipe(
    recipe: str | Path | ResolvedRecipe,
    profile: str | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overrides: list[str] | tuple[str, ...] = (),
) -> RunResult:
    """Resolve (unless given resolved) and run a recipe into run_dir; see the module docstring."""
    resolved = recipe if isinstance(recipe, ResolvedRecipe) else resolve(recipe, profile, overrides)
    run_dir = Path(run_dir) if run_dir else Path("runs") / f"{resolved.name}-{resolved.profile}"
    if resolved.seeds:
        return run_seeds(resolved, run_dir, resume)

    info = D.init_distributed()
    if not info.is_main:
        return _run(resolved, run_dir, main=False)
    _check_same_recipe(run_dir, resolved)
    with RunLock(run_dir, resume):
        check_writable(run_dir)
        return _run(resolved, run_dir, main=True)


def run_seeds(resolved: ResolvedRecipe, run_dir: Path, resume: bool = False) -> RunResult:
    """One complete run per seed of `[recipe] seeds` (run_dir/seed-<s>/, each resumable on its
    own), then results.json with every per-seed record (`run_seed`), summary.json / results.md
    (mean and 95% interval over seeds and test images), transfer.png (clean vs robust on the
    unseen classes) and samples.npz."""

    main = D.init_distributed().is_main
    if main:
        _check_same_recipe(run_dir, resolved)
    lock = RunLock(run_dir, resume, what="multi-seed run") if main else None
    if lock:
        lock.acquire()
    try:
        if main:
            check_writable(run_dir)
            _write_run_files(run_dir, resolved)
        records: list[dict[str, Any]] = []
        checkpoints: dict[str, str] = {}
        for i, seed in enumerate(resolved.seeds):
            log(f"seed {seed} ({i + 1} of {len(resolved.seeds)}): {run_dir / f'seed-{seed}'}")
            one = run_recipe(
                resolved.for_seed(seed), run_dir=run_dir / f"seed-{seed}", resume=resume
            )
            seeded = with_components(run_dir / f"seed-{seed}", one.records)
            records += [{**rec, "run_seed": seed} for rec in seeded]
            checkpoints.update({f"seed-{seed}/{k}": v for k, v in one.checkpoints.items()})
        table = ""
        if main and records:
            atomic_write_json(run_dir / "results.json", records)
            table = write_seed_summary(run_dir, records)  # + samples.npz over every seed
            P.stamp_summary(run_dir, records)
            P.write_run_provenance(run_dir, records)
    finally:
        if lock:
            lock.release()
    return RunResult(run_dir, records, table, resolved.to_dict(), checkpoints)


def _note_start_model(resolved: ResolvedRecipe, start_ckpt: Path | None, device: Any) -> None:
    """Stamp every artifact this run writes with its start model's weights sha256, compared
    with the one the published tables came from (utils/provenance.py, models/shipped.py)."""
    spec = resolved.doc["model"]
    loaded = build_model(spec, device, seed=resolved.seed)
    if start_ckpt is not None:
        load_weights(loaded, start_ckpt)
    reference = None if start_ckpt is not None else reference_sha256(spec)
    origin = "pre-trained by this recipe" if start_ckpt else loaded.info.get("weights_origin")
    source = str(spec.get("source") or spec.get("arch"))
    P.set_start_model(P.start_model_info(source, weights_sha256(loaded.model), reference, origin))


def _run(resolved: ResolvedRecipe, run_dir: Path, main: bool) -> RunResult:
    doc = resolved.doc
    prepared = _prepare(resolved)
    prepared["main"] = main
    if main:
        _write_run_files(run_dir, resolved)
    device = resolve_device(doc["recipe"]["device"])
    start_ckpt: Path | None = None
    checkpoints: dict[str, str] = {}
    if "pretrain" in resolved.stages:
        start_ckpt = _train_one(resolved, doc["pretrain"], None, run_dir, device, prepared)
        checkpoints[doc["pretrain"]["label"]] = str(start_ckpt)
    elif "pretrain" in doc:
        start_ckpt = _trained_earlier(resolved, doc["pretrain"], None, run_dir)
    _note_start_model(resolved, start_ckpt, device)
    trained: dict[str, Path] = {}
    for method in resolved.methods:
        if "defend" in resolved.stages:
            ckpt = _train_one(resolved, method, start_ckpt, run_dir, device, prepared)
        else:  # trained by an earlier run (if at all)
            ckpt = _trained_earlier(resolved, method, start_ckpt, run_dir)
            if ckpt is None:
                continue
        trained[method["label"]] = ckpt
        checkpoints[method["label"]] = str(ckpt)
    records: list[dict[str, Any]] = []
    table = ""
    if "evaluate" in resolved.stages:
        models = [(START_LABEL, start_ckpt)] + list(trained.items())
        protocol = prepared["protocol"]
        if main:
            atomic_write_json(run_dir / "protocol.json", protocol.to_dict())
        for label, ckpt in models:
            loaded = build_model(doc["model"], device, seed=resolved.seed)
            if ckpt is not None:
                load_weights(loaded, ckpt)
            log(f"{label}: evaluating under protocol '{protocol.name}'")
            records += evaluate_loaded(
                loaded, protocol, run_dir, label, spec=doc["model"], checkpoint=ckpt
            )
        if main:
            table = write_results(run_dir, records)
    return RunResult(run_dir, records, table, resolved.to_dict(), checkpoints)
