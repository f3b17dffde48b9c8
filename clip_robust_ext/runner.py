"""Running a resolved recipe: pretrain -> defend -> evaluate, resumable, one run dir per run.

Run directory layout:
    recipe.resolved.json / .toml   the exact recipe (profile and --set applied)
    versions.json, seed            package and plugin versions, the seed
    run.lock                       held while running; a second run on the same dir is refused
    pretrain/ <label>/             per trained model: checkpoint.pt (resume), final.pt (open_clip
                                   format), metrics.jsonl, done.json once finished
    eval/                          the evaluation engine's per-dataset records (resumable)
    results.json / .md / .csv      all records and the human tables
Re-running the same resolved recipe recomputes nothing that finished; after a crash, --resume
continues training from the last checkpoint and evaluation from the last finished dataset.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ClipxError, ClipxUsageError
from .recipes import START_LABEL, ResolvedRecipe, resolve
from .utils.io import atomic_write_json, atomic_write_text

LOCK_NAME = "run.lock"


def log(message: str) -> None:
    print(f"clipx: {message}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------- lock


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name (state first), or None (no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """The process start time in clock ticks since boot: with the pid, a process's identity
    (a pid is reused; a pid and start time are not)."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _pid_alive(pid: int, start: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_stat(pid)
    if fields is None:
        return True
    if fields[0] == "Z":  # a killed child not yet reaped is a zombie: not running
        return False
    # the lock's pid now names another process: the owner is gone, its pid was reused
    return start is None or len(fields) <= 19 or fields[19] == str(start)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so a run stops the same clean way (lock released, finished
    work kept, resumable)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


class RunLock:
    """run_dir/run.lock: refuses a second run on the same dir, unless resuming a dead one."""

    def __init__(self, run_dir: Path, resume: bool, what: str = "run"):
        self.path = Path(run_dir) / LOCK_NAME
        self.resume, self.what = resume, what
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        self._previous_handler = None
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
        self.release()
        if exc_type is not None and issubclass(exc_type, Terminated):
            log(
                f"stopped by SIGTERM; finished work in {self.path.parent} is kept; run the same "
                "command again to continue"
            )

    def _mine(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "pid_start": _start_time(os.getpid()),
            "host": socket.gethostname(),
            "started": time.time(),
        }

    def acquire(self) -> None:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ClipxError(f"cannot create run dir {folder}: {exc.strerror or exc}") from None
        for _ in range(3):  # a stale lock another process just removed: create again
            if self._create():
                return
            if self._take_over():
                return
        raise ClipxUsageError(f"{folder}: another clipx process is taking this run dir; try again")

    def _create(self) -> bool:
        """Exclusive create: of two processes only one makes the file."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            folder = self.path.parent
            raise ClipxError(f"run dir {folder} is not writable: {exc.strerror or exc}") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(self._mine(), fh)
        self.held = True
        return True

    def _read_owner(self, path: Path) -> dict[str, Any] | None:
        try:
            owner = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def _remove_stale(self, owner: dict[str, Any]) -> bool:
        """Move the stale lock aside (atomic rename) and check it is the one inspected; a lock a
        racing resume created meanwhile is put back. True if this process removed it."""
        grave = self.path.with_name(f".{LOCK_NAME}.{os.getpid()}.{time.time_ns()}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return False
        if self._read_owner(grave) != owner:
            try:
                os.link(grave, self.path)
            except OSError:
                pass
            grave.unlink(missing_ok=True)
            return False
        grave.unlink(missing_ok=True)
        return True

    def _take_over(self) -> bool:
        owner = self._read_owner(self.path)
        if owner is None:
            return False  # released meanwhile: create it
        try:
            # a lock cut by a crash (or not clipx's) names no host: it was written here
            pid, host = int(owner.get("pid", -1)), str(owner.get("host") or socket.gethostname())
            started_at = float(owner.get("started", 0) or 0)
        except (TypeError, ValueError, OverflowError):
            pid, host, started_at = -1, socket.gethostname(), 0.0
        here = host == socket.gethostname()
        if pid == os.getpid() and here and owner.get("pid_start") == _start_time(pid):
            raise ClipxUsageError(f"{self.path.parent} is already in use by this process")
        try:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started_at))
        except (OverflowError, OSError, ValueError):
            started = "an unknown time"
        alive = here and pid > 0 and _pid_alive(pid, owner.get("pid_start"))
        if alive or (not here and not self.resume):
            where = "" if here else f" on {host}"
            raise ClipxUsageError(
                f"{self.path.parent} is in use by clipx process {pid}{where} (since {started}); "
                f"wait for it, or choose another --run-dir"
            )
        if not self.resume:
            raise ClipxUsageError(
                f"{self.path.parent}: an earlier {self.what} (pid {pid}, started {started}) did not "
                "finish; pass --resume to continue it, or choose another --run-dir"
            )
        if not self._remove_stale(owner) or not self._create():
            return False  # another resume took it first: look again
        log(f"resuming the interrupted {self.what} in {self.path.parent}")
        return True

    def release(self) -> None:
        if self.held:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self.held = False


# --------------------------------------------------------------------------------- building


def device_of(spec: str):
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ClipxUsageError(f"device {spec!r} requested but CUDA is not available here")
    return device


def build_model(spec: dict[str, Any], device: Any = None, seed: int | None = None):
    """The model of a validated [model] table (seeded: random-init weights are reproducible)."""
    from .models import load_into_clip, read_state_dict
    from .registry import get
    from .utils.seeding import seed_everything

    if seed is not None:
        seed_everything(seed)
    kwargs = {k: v for k, v in spec.items() if k not in ("source", "checkpoint")}
    loaded = get("models", spec["source"]).obj(**kwargs)
    if spec.get("checkpoint"):
        path = Path(spec["checkpoint"]).expanduser()
        if not path.is_file():
            raise ClipxUsageError(f"model.checkpoint: file not found: {path}")
        load_into_clip(loaded.model, read_state_dict(path), str(path))
        loaded.info["checkpoint"] = str(path.resolve())
    if device is not None:
        loaded.model.to(device)
    return loaded


def load_weights(loaded, path: Path):
    from .models import load_into_clip, read_state_dict

    load_into_clip(loaded.model, read_state_dict(path), str(path))
    loaded.info["checkpoint"] = str(path)
    return loaded


class _Subset:
    """A deterministic subset that keeps `classnames` and `caption(i)` of its dataset."""

    def __init__(self, dataset: Any, indices: list[int]):
        self.dataset, self.indices = dataset, indices
        self.classnames = getattr(dataset, "classnames", None)
        if callable(getattr(dataset, "caption", None)):
            self.caption = lambda i: dataset.caption(self.indices[i])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]


def build_dataset(spec: dict[str, Any], seed: int):
    """(dataset, classnames, templates) of a validated [data] table."""
    from .data import restrict, sample_indices
    from .data.splits import factory_kwargs
    from .registry import get

    kwargs = factory_kwargs(spec, ("dataset", "templates", "n"))
    dataset = restrict(get("datasets", spec["dataset"]).obj(**kwargs), spec, "data")
    if spec.get("n") is not None and spec["n"] < len(dataset):
        dataset = _Subset(dataset, sample_indices(len(dataset), spec["n"], seed))
    if len(dataset) == 0:
        raise ClipxUsageError(f"data: dataset '{spec['dataset']}' is empty")
    classnames = getattr(dataset, "classnames", None)
    if not classnames:
        raise ClipxUsageError(f"data: dataset '{spec['dataset']}' has no class names")
    from .data.checks import check_image

    check_image(dataset[0][0], f"data: dataset '{spec['dataset']}'", 0)  # before any training
    return dataset, list(classnames), template_list(spec.get("templates"), "data.templates")


def template_list(value: Any, key: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return value
    from .registry import get

    templates = get("templates", value).obj
    if isinstance(templates, dict):
        raise ClipxUsageError(
            f"{key}: '{value}' is a description set; a list of '{{}}' templates is needed here"
        )
    return list(templates)


def build_defense(method: dict[str, Any]):
    from .registry import get

    defense = get("defenses", method["name"]).obj(**method["params"])
    if not hasattr(defense, "loss"):
        raise ClipxError(
            f"defense '{method['name']}': its factory returned {type(defense).__name__}, not a Defense"
        )
    return defense


def train_config(method: dict[str, Any]):
    from .training.config import TrainConfig

    return TrainConfig.from_dict(dict(method["train"]))


# ------------------------------------------------------------------------------------ result


@dataclass
class RunResult:
    run_dir: Path
    records: list[dict[str, Any]]
    table: str
    recipe: dict[str, Any] | None = None  # the resolved recipe, or the `clipx eval` request
    checkpoints: dict[str, str] = field(default_factory=dict)
    kind: str = "recipe"

    def to_dict(self) -> dict[str, Any]:
        head = {"run_dir": str(self.run_dir), self.kind: self.recipe}
        if self.kind == "recipe":
            head["checkpoints"] = self.checkpoints
        return {**head, "records": self.records}


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
    from .plugins import plugin_versions
    from .utils.versions import versions

    note_components(run_dir, recipe_components(resolved.doc))
    atomic_write_json(run_dir / "recipe.resolved.json", resolved.doc)
    atomic_write_text(run_dir / "recipe.resolved.toml", resolved.to_toml())
    atomic_write_json(
        run_dir / "versions.json", {"packages": versions(), "plugins": plugin_versions()}
    )
    atomic_write_text(run_dir / "seed", f"{resolved.seed}\n")


# ------------------------------------------------------------------------------------ stages


def _train_one(
    resolved: ResolvedRecipe,
    method: dict[str, Any],
    start_ckpt: Path | None,
    run_dir: Path,
    device: Any,
    prepared: dict[str, Any],
) -> Path:
    """Train one method from the start model; returns its open_clip checkpoint (final.pt)."""
    from .cachekeys import read_key, training_key
    from .training.checkpoint import FINAL_NAME
    from .training.trainer import train

    label = method["label"]
    out = run_dir / label
    done = out / "done.json"
    key = training_key(resolved.doc, method, start_ckpt, class_split_of(resolved, prepared))
    final = out / FINAL_NAME
    if done.is_file() and final.is_file() and read_key(done) == key:
        log(f"{label}: already trained ({final})")
        return final
    if prepared["main"]:
        _set_aside_if_stale(out, key)
        atomic_write_json(out / "inputs.json", {"key": key})
    log(f"{label}: training defense '{method['name']}' into {out}")
    loaded = build_model(resolved.doc["model"], device, seed=resolved.seed)
    if start_ckpt is not None:
        load_weights(loaded, start_ckpt)
    dataset, classnames, templates = prepared["data"]
    started = time.perf_counter()
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
                "seconds": round(time.perf_counter() - started, 2),
            },
        )
    return final


def _set_aside_if_stale(out: Path, key: dict[str, Any]) -> None:
    """A model folder trained (or started) from other inputs is moved to <label>.stale-N (kept,
    never resumed from), and the run says which inputs changed."""
    from .cachekeys import changed, read_key

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
    from .cachekeys import changed, read_key, training_key

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
    return done.parent / "final.pt"


def class_split_of(resolved: ResolvedRecipe, prepared: dict[str, Any] | None = None):
    """The class names `[data] classes = ...` resolved to (None without a class split): part of
    the training key, so a changed split declaration retrains instead of reusing a model."""
    from .data.splits import restricts

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
        from .evaluation import protocol_from_dict

        prepared["protocol"] = protocol = protocol_from_dict(doc["evaluate"])
        if trained and getattr(protocol, "evaluate_with", None) is None:
            _check_eval_datasets(protocol)
    return prepared


def _check_eval_datasets(protocol: Any) -> None:
    """Open every evaluation dataset before training, so a missing folder or an empty dataset
    fails now rather than after hours of training (the engine caches what it opened)."""
    from .evaluation.engine import build_dataset as open_eval_dataset
    from .evaluation.protocols import dataset_key

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
    from .training import distributed as D

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
    (mean ± std over seeds) and transfer.png (clean vs robust on the unseen classes)."""
    from .evaluation.spread import aggregate, write_spread
    from .training import distributed as D

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
            rows = aggregate(records)
            atomic_write_json(run_dir / "results.json", records)
            atomic_write_json(run_dir / "summary.json", rows)
            table = write_spread(run_dir, rows)
            atomic_write_text(run_dir / "results.md", table)
    finally:
        if lock:
            lock.release()
    return RunResult(run_dir, records, table, resolved.to_dict(), checkpoints)


def check_writable(run_dir: Path) -> None:
    import shutil

    probe = run_dir / ".write-test"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ClipxError(f"run dir {run_dir} is not writable: {exc.strerror or exc}") from None
    free = shutil.disk_usage(run_dir).free
    if free < 50 * 2**20:
        raise ClipxError(f"run dir {run_dir}: only {free // 2**20} MiB free; need at least 50 MiB")


def _run(resolved: ResolvedRecipe, run_dir: Path, main: bool) -> RunResult:
    doc = resolved.doc
    prepared = _prepare(resolved)
    prepared["main"] = main
    if main:
        _write_run_files(run_dir, resolved)
    device = device_of(doc["recipe"]["device"])
    start_ckpt: Path | None = None
    checkpoints: dict[str, str] = {}
    if "pretrain" in resolved.stages:
        start_ckpt = _train_one(resolved, doc["pretrain"], None, run_dir, device, prepared)
        checkpoints[doc["pretrain"]["label"]] = str(start_ckpt)
    elif "pretrain" in doc:
        start_ckpt = _trained_earlier(resolved, doc["pretrain"], None, run_dir)
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


def finished_models(run_dir: Path, doc: dict[str, Any]) -> list[tuple[str, Path | None]]:
    """(label, checkpoint) of every model a recipe run has finished, in table order: the start
    model (its pretrained checkpoint, or None for the source's own weights), then each trained
    method. For commands that evaluate a finished run further (e.g. `clipx saft grid`)."""
    run_dir = Path(run_dir)
    start = None
    if "pretrain" in doc and (run_dir / doc["pretrain"]["label"] / "done.json").is_file():
        start = run_dir / doc["pretrain"]["label"] / "final.pt"
    models: list[tuple[str, Path | None]] = [(START_LABEL, start)]
    for method in _methods_of(doc):
        if (run_dir / method["label"] / "done.json").is_file():
            models.append((method["label"], run_dir / method["label"] / "final.pt"))
    return models


def _methods_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return ([doc["defense"]] if "defense" in doc else []) + list(doc.get("baselines", []))


def evaluate_loaded(
    loaded: Any,
    protocol: Any,
    run_dir: Path,
    label: str,
    spec: dict[str, Any] | None = None,
    checkpoint: Path | None = None,
) -> list[dict[str, Any]]:
    """Evaluate, then write the model's result card (run_dir/cards/; evaluation/cards.py)."""
    from .evaluation import evaluate
    from .evaluation.cards import evaluate_with_card

    records, _ = evaluate_with_card(
        loaded,
        protocol,
        run_dir,
        label,
        lambda: evaluate(loaded, protocol, run_dir, label),
        spec=spec,
        checkpoint=checkpoint,
    )
    return records


COMPONENTS_NAME = "components.json"  # evaluation/provenance.py reads it


def recipe_components(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """label -> the model source and defenses (with their plugins) behind each model of a recipe."""
    from .registry import provenance

    model = {"model": provenance("models", doc["model"]["source"])}
    out = {START_LABEL: dict(model)}
    pretrain = doc.get("pretrain")
    start = {**model, "pretrain": provenance("defenses", pretrain["name"])} if pretrain else model
    if pretrain:
        out[pretrain["label"]] = dict(start)
    for method in [doc.get("defense"), *doc.get("baselines", [])]:
        if method:
            out[method["label"]] = {**start, "defense": provenance("defenses", method["name"])}
    return out


def note_components(run_dir: Path, by_label: dict[str, dict[str, Any]]) -> None:
    """Merge label -> components into run_dir/components.json (read by write_results)."""
    path = Path(run_dir) / COMPONENTS_NAME
    known = _read_components(run_dir)
    atomic_write_json(path, {**known, **by_label})


def _read_components(run_dir: Path) -> dict[str, Any]:
    from .evaluation.provenance import read_components

    return read_components(run_dir)


def with_components(run_dir: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each record with `components`: every component behind it (model source, defenses,
    protocol, dataset, attacks) with the plugin and distribution that supplied it."""
    from .evaluation.provenance import record_components

    by_label = _read_components(run_dir)
    return [{**rec, "components": record_components(by_label, rec)} for rec in records]


def write_results(run_dir: Path, records: list[dict[str, Any]]) -> str:
    """results.json (every record, with the plugins behind it), results.md / results.csv
    (tables); returns the markdown."""
    from .evaluation import markdown_table, write_reports

    atomic_write_json(run_dir / "results.json", with_components(run_dir, records))
    write_reports(run_dir, records)
    return markdown_table(records)


# ------------------------------------------------------------------------------ clipx eval


def _kv(items: tuple[str, ...] | list[str], what: str) -> dict[str, Any]:
    from .recipes import parse_set

    out: dict[str, Any] = {}
    for item in items:
        parts, value = parse_set(item)
        if len(parts) != 1:
            raise ClipxUsageError(f"{what} {item!r}: expected KEY=VALUE with a plain key")
        out[parts[0]] = value
    return out


def eval_model_spec(
    model: str,
    arch: str | None = None,
    pretrained: str | None = None,
    checkpoint: str | None = None,
    model_args: tuple[str, ...] = (),
) -> tuple[dict[str, Any], str]:
    """--model & co -> a [model] table and a default label."""
    from .errors import unknown_name
    from .registry import entries

    models = entries("models")
    extra = _kv(model_args, "--model-arg")
    if model in models:
        spec: dict[str, Any] = {"source": model, **extra}
        from .params import signature_of

        accepted, var_kw = signature_of(models[model].obj)
        for key, value in (("arch", arch), ("pretrained", pretrained)):
            if value is None:
                continue
            if key in accepted or var_kw:
                spec[key] = value
            elif key == "pretrained" and checkpoint is None:
                checkpoint = value  # a checkpoint for a source that builds its own architecture
            else:
                raise ClipxUsageError(f"--{key}: model source '{model}' takes no {key}")
        label = arch if model == "open_clip" and arch else model
    elif Path(model).expanduser().is_file():
        if not arch:
            raise ClipxUsageError(
                f"--model {model}: a checkpoint file needs --arch (its open_clip architecture)"
            )
        spec = {"source": "open_clip", "arch": arch, "pretrained": model, **extra}
        label = _file_label(Path(model))
    else:
        import open_clip

        from .models.hub import has_schema

        named = has_schema(model) or model.startswith("zoo:")  # hf-hub:, local-dir:, zoo:
        if model not in open_clip.list_models() and not named:
            choices = list(models) + open_clip.list_models()
            raise unknown_name(
                "model (clipx model source or open_clip architecture)", model, choices
            )
        if arch and arch != model:
            raise ClipxUsageError(
                f"--model {model} is an open_clip architecture; drop --arch {arch}"
            )
        spec = {"source": "open_clip", "arch": model, **extra}
        if pretrained:
            spec["pretrained"] = pretrained
        label = model
    if checkpoint is not None:
        spec["checkpoint"] = checkpoint
        label = _file_label(Path(checkpoint))
    elif pretrained and Path(pretrained).expanduser().is_file():
        label = _file_label(Path(pretrained))
    return spec, label


def _file_label(path: Path) -> str:
    """The default label of a weights file: its name (its folder's for final.pt/checkpoint.pt)
    plus a short hash of its absolute path, so two files that share a name never share results."""
    import hashlib

    path = path.expanduser()
    name = path.stem if path.stem not in ("final", "checkpoint") else path.resolve().parent.name
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:6]
    return f"{name or 'model'}-{digest}"


def run_eval(
    model: str,
    protocol: str,
    arch: str | None = None,
    pretrained: str | None = None,
    checkpoint: str | None = None,
    model_args: tuple[str, ...] = (),
    attacks: tuple[str, ...] = (),
    eps: tuple[str, ...] = (),
    datasets: tuple[str, ...] = (),
    testtime: tuple[str, ...] = (),
    n_samples: int | None = None,
    templates: str | None = None,
    seed: int | None = None,
    overrides: tuple[str, ...] = (),
    label: str | None = None,
    run_dir: str | Path | None = None,
    device: str = "auto",
    shard: str | None = None,
) -> RunResult:
    """Evaluate one model under a protocol (`clipx eval`). Earlier results in run_dir (other
    datasets, other models) are kept and appear in the tables; finished datasets are reused."""
    from .evaluation import load_records
    from .recipes import Registries, model_section

    reg = Registries()
    raw_spec, default_label = eval_model_spec(model, arch, pretrained, checkpoint, model_args)
    spec = model_section(raw_spec, reg)
    section, proto = eval_protocol(
        protocol, attacks, eps, datasets, n_samples, templates, seed, overrides, reg, testtime
    )
    from .validation import check_device

    label = eval_label(label, default_label)
    check_device(device, "--device")
    run_dir = Path(run_dir) if run_dir else Path("runs") / f"eval-{label}"
    request = {"label": label, "model": spec, "evaluate": section}
    from .evaluation import distributed as D
    from .evaluation.shards import parse_shard, shard_dir

    part = parse_shard(shard) if shard else None
    where = shard_dir(run_dir, *part) if part else run_dir
    D.maybe_init()  # torchrun, srun, accelerate: rank 0 holds the lock and writes
    with D.held_by_main(RunLock(where, resume=True, what="evaluation")):
        D.on_main(lambda: check_writable(where))
        loaded = build_model(spec, device_of(device), seed=0)
        if part:
            return eval_shard(loaded, proto, run_dir, label, part, request)
        from .registry import provenance

        components = {label: {"model": provenance("models", spec["source"])}}
        D.on_main(lambda: note_components(run_dir, components))
        D.on_main(lambda: log(f"{label}: evaluating under protocol '{proto.name}' into {run_dir}"))
        records = evaluate_loaded(loaded, proto, run_dir, label, spec=spec)
        table = D.on_main(lambda: write_results(run_dir, load_records(run_dir)))
    return RunResult(run_dir, records, table, request, kind="request")


def eval_shard(loaded, proto, run_dir: Path, label: str, part, request) -> RunResult:
    """One array-job shard of `clipx eval` (evaluation/shards.py); merged by eval_merge."""
    from .evaluation import distributed as D
    from .evaluation.shards import evaluate_shard
    from .registry import provenance

    model = provenance("models", request["model"]["source"])
    request = {**request, "protocol_name": proto.name, "components": {label: {"model": model}}}
    D.on_main(lambda: log(f"{label}: shard {part[0]}/{part[1]} of protocol '{proto.name}'"))
    manifest = evaluate_shard(loaded, proto, run_dir, label, part, request)
    done = len(manifest["assigned"])
    table = (
        f"shard {part[0]}/{part[1]}: {done} batches done; when every shard has finished: "
        f"clipx eval-merge {run_dir}\n"
    )
    return RunResult(run_dir, [], table, request, kind="request")


def eval_merge(run_dir: str | Path) -> RunResult:
    """`clipx eval-merge`: the shards of run_dir as one evaluation's results (and tables)."""
    from .evaluation import load_records
    from .evaluation.merge import merge_shards

    run_dir = Path(run_dir)
    with RunLock(run_dir, resume=True, what="merge"):
        check_writable(run_dir)
        records, request = merge_shards(run_dir)
        note_components(run_dir, request.get("components", {}))
        table = write_results(run_dir, load_records(run_dir))
    return RunResult(run_dir, records, table, request, kind="request")


def eval_label(label: str | None, default: str, option: str = "--label") -> str:
    """The given label, or `default` made file-name safe (model names become run-dir names)."""
    import re

    from .validation import check_label

    return check_label(label or re.sub(r"[^A-Za-z0-9_.+-]", "-", default).lstrip("-."), option)


def eval_protocol(
    protocol: str,
    attacks: tuple[str, ...] = (),
    eps: tuple[str, ...] = (),
    datasets: tuple[str, ...] = (),
    n_samples: int | None = None,
    templates: str | None = None,
    seed: int | None = None,
    overrides: tuple[str, ...] = (),
    reg: Any = None,
    testtime: tuple[str, ...] = (),
) -> tuple[dict[str, Any], Any]:
    """`clipx eval`'s protocol options -> (the validated [evaluate] table, its Protocol); shared by
    the commands that evaluate under a protocol (eval, interpolate, features)."""
    from .evaluation import protocol_from_dict
    from .recipes import Registries, apply_set, evaluate_section, parse_set

    reg = reg or Registries()
    section: dict[str, Any] = {"protocol": protocol}
    for key, value in (
        ("attacks", list(attacks)),
        ("eps", list(eps)),
        ("datasets", list(datasets)),
        ("testtime", list(testtime)),
    ):
        if value:
            section[key] = value
    for key, value in (("n_samples", n_samples), ("templates", templates), ("seed", seed)):
        if value is not None:
            section[key] = value
    for item in overrides:
        parts, value = parse_set(item)
        if parts[0] == "evaluate":
            parts = parts[1:]
        apply_set(section, parts, value)
    section = evaluate_section(section, reg)
    return section, protocol_from_dict(section)
