"""The evaluation loop: clean and adversarial accuracy, per-sample worst case over attacks.

Per dataset: deterministic sample subset (protocol seed), zero-shot head computed once, batches
streamed from a DataLoader, every attack run on the clean-correct samples of each batch with a
seed derived from (protocol seed, dataset, attack, eps, global batch index) - so results do not
depend on the order of attacks or datasets, on resuming, or on the rank that ran the batch.
Every adversarial batch is checked (eps ball, [0, 1], finite, fp32, eval mode) before it counts.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..attacks import attack_mode, build_attack, verify_adversarial
from ..attacks.base import BuiltAttack
from ..cachekeys import changed, component_fingerprint, digest, evaluation_key
from ..data import sample_indices
from ..data.checks import collate_labelled
from ..data.splits import factory_kwargs, restrict, restricts
from ..errors import AdversarialCheckError, ClipxError, ClipxUsageError
from ..models import LoadedCLIP, ZeroShotClassifier
from ..models.accelerate import accelerated
from ..models.checkpoints import check_weights
from ..plugin_manager import distribution_of
from ..registry import get
from ..utils.devices import model_device
from ..utils.provenance import provenance_stamp
from ..utils.versions import versions
from . import distributed as D
from . import records as R
from .protocols import Protocol, dataset_key, eps_label, protocol_from_dict, resolve_budget_expr
from .randomness import deterministic, pipeline_record, probe_images, randomized_params
from .testtime import DefendedClassifier, build_testtime


@dataclass
class PlannedAttack:
    key: str  # per-sample result key: label@eps for budgeted attacks, label for text attacks
    label: str
    name: str
    modality: str
    eps: float | None
    params: dict[str, Any]
    attack: BuiltAttack
    backend: str
    mode: str | None = None  # with test-time defenses: "adaptive" | "non-adaptive"
    draws: int = 1  # scoring passes of each adversarial example, worst kept (random pipelines)

    def describe(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "name": self.name,
            "modality": self.modality,
            "eps": self.eps,
            "params": self.params,
            "backend": self.backend,
            **({"mode": self.mode} if self.mode else {}),
            **({"final_draws": self.draws} if self.draws > 1 else {}),
        }


def _log(message: str) -> None:
    print(f"clipx: {message}", file=sys.stderr, flush=True)


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from any parts; the same parts give the same seed on every machine."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**31 - 1)


# -- building blocks ----------------------------------------------------------------------------
def resolve_templates(templates: Any) -> list[str] | dict[str, list[str]]:
    """A template-set name, one '{}' template, a list of templates, or class -> descriptions."""
    if isinstance(templates, str):
        if "{}" in templates:
            return [templates]
        value = get("templates", templates).obj
        return value if isinstance(value, dict) else list(value)
    if isinstance(templates, dict):
        return {str(k): list(v) for k, v in templates.items()}
    if (
        isinstance(templates, (list, tuple))
        and templates
        and all(isinstance(t, str) for t in templates)
    ):
        return list(templates)
    raise ClipxUsageError(
        f"templates must be a set name or a list of '{{}}' strings, got {templates!r}"
    )


def build_classifier(
    loaded: LoadedCLIP, classnames: Sequence[str], templates: Any
) -> ZeroShotClassifier:
    """Zero-shot head over `templates` (or per-class descriptions), on the model's device."""
    resolved = resolve_templates(templates)
    if isinstance(resolved, dict):
        missing = [c for c in classnames if c not in resolved]
        if missing:
            raise ClipxUsageError(f"class descriptions missing for {missing[:5]}")
        zs = ZeroShotClassifier(
            loaded, classnames=classnames, prompts=[resolved[c] for c in classnames]
        )
    else:
        zs = ZeroShotClassifier(loaded, classnames=classnames, templates=resolved)
    return zs.to(model_device(loaded.model)).eval()


_DATASETS: dict[str, Any] = {}  # a few recently built datasets: recipes evaluate several models


def open_eval_dataset(spec: dict[str, Any], cache: bool = True):
    """A registered dataset from a protocol dataset spec {dataset, split, n, templates, **kwargs}."""
    kwargs = factory_kwargs(spec, ("dataset", "n", "templates", "resolution"))
    # where datasets come from is part of their identity ($CLIPX_ASSETS, $CLIPX_DATA)
    where = [os.environ.get("CLIPX_ASSETS"), os.environ.get("CLIPX_DATA")]
    key = json.dumps([spec["dataset"], kwargs, where], sort_keys=True, default=str)
    if cache and key in _DATASETS:  # the views of one dataset (seen / unseen) share its images
        ds = _DATASETS[key]
    else:
        ds = get("datasets", spec["dataset"]).obj(**kwargs)
        if not hasattr(ds, "classnames"):
            raise ClipxUsageError(f"dataset '{spec['dataset']}' has no classnames attribute")
        if cache:
            while len(_DATASETS) >= 4:
                _DATASETS.pop(next(iter(_DATASETS)))
            _DATASETS[key] = ds
    return restrict(ds, spec, f"dataset '{spec['dataset']}'")


class _Resized(torch.utils.data.Dataset):
    """A dataset whose images are resized (bicubic, antialiased, clipped to [0, 1]) to size x size
    before the attack: the protocol's `resolution`. Other attributes pass through."""

    def __init__(self, dataset, size: int):
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        if name in ("dataset", "size"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, i: int):
        image, *rest = self.dataset[i]
        if tuple(image.shape[-2:]) != (self.size, self.size):
            image = F.interpolate(
                image.unsqueeze(0).float(),
                size=(self.size, self.size),
                mode="bicubic",
                antialias=True,
                align_corners=False,
            )[0].clamp(0, 1)
        return (image, *rest)


def at_resolution(dataset, size: int | None):
    """`dataset` itself (size None) or a view of it resized to size x size."""
    return dataset if size is None else _Resized(dataset, size)


def _backend_of(attack: BuiltAttack, plugin: str) -> str:
    """Whose code computes the attack: its own `backend` string, torchattacks for torchattacks'
    classes, else the plugin (with its distribution and version), "on torchattacks" when a
    plugin's class runs through the torchattacks adapter."""
    backend = getattr(attack.impl, "backend", None)
    if isinstance(backend, str):
        return backend
    dist, version = distribution_of(plugin)
    own = f"plugin {plugin}" + (f" ({dist} {version})" if version else "")
    if type(attack.impl).__module__.endswith("torchattacks_adapter"):
        base = f"torchattacks {metadata.version('torchattacks')}"
        inner = type(getattr(attack.impl, "attack", None)).__module__
        return base if inner.split(".")[0] == "torchattacks" else f"{own} on {base}"
    return own


def plan_attacks(
    zs: nn.Module, protocol: Protocol, key: str = "dataset", randomized: bool = False
) -> list[PlannedAttack]:
    """Bind every protocol attack to `zs`: image/multimodal ones once per eps, text ones once.
    `randomized` (zs found non-deterministic): early exit off, EOT on (randomness.py)."""
    plan: list[PlannedAttack] = []
    for spec in protocol.attacks:
        entry = get("attacks", spec["name"])
        modality = entry.modality or "image"
        takes = set(entry.protocol_params)
        budgets: list[float | None] = list(protocol.eps) if modality != "text" else [None]
        for eps in budgets:
            params = {
                k: resolve_budget_expr(v, eps) if eps is not None else v
                for k, v in spec["params"].items()
            }
            if eps is not None:
                params["eps"] = eps
            if "norm" in takes:
                params.setdefault("norm", protocol.norm)
            if "backend" in takes and protocol.backend:
                params.setdefault("backend", protocol.backend)
            if "early_exit" in takes:
                params.setdefault("early_exit", protocol.early_exit)
            if "seed" in takes:
                params.setdefault("seed", derive_seed(protocol.seed, key, spec["label"], eps))
            if randomized:
                params = randomized_params(spec["name"], params, protocol.eot_samples)
            built = build_attack(spec["name"], zs, **params)
            norm = getattr(built.impl, "norm", None)
            if eps is not None and isinstance(norm, str) and norm != protocol.norm:
                raise ClipxUsageError(
                    f"attack '{spec['label']}' is {norm} but protocol '{protocol.name}' is {protocol.norm}"
                )
            k = spec["label"] if eps is None else f"{spec['label']}@{eps_label(eps)}"
            plan.append(
                PlannedAttack(
                    k,
                    spec["label"],
                    spec["name"],
                    modality,
                    eps,
                    params,
                    built,
                    _backend_of(built, entry.plugin),
                )
            )
    return plan


def plan_modes(
    zs: ZeroShotClassifier,
    defended: DefendedClassifier | None,
    protocol: Protocol,
    key: str = "dataset",
    randomized: tuple[bool, bool] = (False, False),
) -> list[PlannedAttack]:
    """The attacks of a protocol with test-time defenses, once per mode and labelled with it:
    "non-adaptive" bound to the undefended classifier, "adaptive" to the pipeline that is scored
    (for an undefended model that is the classifier itself: only its adaptive attacks run).
    `randomized`: (zs, defended) found non-deterministic."""
    plan: list[PlannedAttack] = []
    for mode in protocol.testtime_modes:
        if mode == "non-adaptive" and defended is None:
            continue
        on_defended = mode == "adaptive" and defended is not None
        target = defended if on_defended else zs
        for p in plan_attacks(target, protocol, key, randomized[int(on_defended)]):
            if p.modality != "image":
                raise ClipxUsageError(
                    f"attack '{p.label}' is a {p.modality} attack; test-time defenses are "
                    "evaluated under image attacks only"
                )
            p.label, p.mode = f"{p.label} ({mode})", mode
            p.key = p.label if p.eps is None else f"{p.label}@{eps_label(p.eps)}"
            plan.append(p)
    return plan


def check_model(model: nn.Module, protocol: Protocol, what: str) -> None:
    if any(m.training for m in model.modules()):
        raise AdversarialCheckError(f"{what}: model is in train mode during evaluation")
    if protocol.precision == "fp32":
        dtypes = {p.dtype for p in model.parameters()}
        if dtypes - {torch.float32}:
            raise ClipxUsageError(
                f"{what}: attacks run in fp32 but the model has {sorted(map(str, dtypes))}; "
                "load it in fp32 or set precision = 'model'"
            )


def protocol_samples(protocol: Protocol, spec: dict[str, Any]) -> tuple[Any, list[int]]:
    """A protocol dataset at its attack resolution, and the indices the protocol evaluates."""
    ds = at_resolution(open_eval_dataset(spec), protocol.resolution_for(spec))
    return ds, sample_indices(len(ds), protocol.n_for(spec), protocol.seed)


def attack_batch(
    zs: nn.Module,
    p: PlannedAttack,
    x: torch.Tensor,
    y: torch.Tensor,
    protocol: Protocol,
    key: str,
    batch_id: int,
) -> Any:
    """One planned attack on one batch, the engine's way: seeded per (protocol seed, dataset,
    attack, batch), eval mode checked before and after, the result checked (images a text attack
    left unchanged; an image attack's within its eps ball, in [0, 1], fp32). Its AttackOutput."""
    torch.manual_seed(derive_seed(protocol.seed, key, p.key, batch_id))
    with attack_mode(zs):
        check_model(zs, protocol, p.label)
        res = p.attack(x, y)
        check_model(zs, protocol, p.label)  # an attack must not switch the model to train
    adv = res.images
    if p.modality == "text":
        if adv.shape != x.shape or not torch.equal(adv, x):
            raise AdversarialCheckError(f"{p.label}: a text attack changed the images")
    else:
        if protocol.precision == "fp32" and adv.dtype != torch.float32:
            raise AdversarialCheckError(f"{p.label}: returned {adv.dtype} images, expected fp32")
        verify_adversarial(x, adv, p.eps, protocol.norm, p.label)
    return res


def run_batch(
    zs: ZeroShotClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    plan: list[PlannedAttack],
    protocol: Protocol,
    key: str,
    batch_id: int,
) -> dict[str, Any]:
    """Clean and per-attack correctness of one batch, as '0101' strings."""
    with torch.no_grad():
        clean = zs(x).argmax(1) == y
    out: dict[str, Any] = {"clean": R.bits(clean), "labels": y.tolist(), "attacks": {}}
    survivors: dict[float | None, torch.Tensor] = {}  # cascade: robust so far, per budget
    for p in plan:
        flags = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        attacked = survivors.get(p.eps, clean) if protocol.cascade else clean
        idx = attacked.nonzero().flatten()
        x_in, y_in = x[idx].contiguous(), y[idx].contiguous()
        if idx.numel():
            res = attack_batch(zs, p, x_in, y_in, protocol, key, batch_id)
            adv = res.images
            if p.modality in ("text", "multimodal") and res.info:
                out.setdefault("info", {})[p.key] = text_attack_info(res.info)
            scorer = res.model if res.model is not None else zs
            with attack_mode(scorer), torch.no_grad():
                check_model(scorer, protocol, p.label)
                right = torch.ones_like(y_in, dtype=torch.bool)
                for _ in range(p.draws):  # a random pipeline: robust only under every draw
                    right &= scorer(adv.to(x.device)).argmax(1) == y_in
                flags[idx] = right
        survivors[p.eps] = flags
        out["attacks"][p.key] = R.bits(flags)
    return out


# what a text attack on the class prompts did, stored with the results (its threat model and goal)
TEXT_INFO_KEYS = (
    "target",
    "goal",
    "transformation",
    "prompts_total",
    "prompts_perturbed",
    "prompts_unchanged",
    "prompts_skipped",
    "prompts_succeeded",
    "skipped_reasons",
    "goal_score_mean",
    "goal_score_max",
    "words_changed_total",
    "words_changed_max",
    "examples",
)


def text_attack_info(info: dict[str, Any]) -> dict[str, Any]:
    """The JSON-safe summary of a text attack's `AttackOutput.info` (prompts are attacked once
    per model, so every batch reports the same summary; the first one is kept)."""
    return {k: info[k] for k in TEXT_INFO_KEYS if k in info}


def run_samples(
    zs: ZeroShotClassifier,
    dataset,
    indices: Sequence[int],
    protocol: Protocol,
    plan: list[PlannedAttack],
    *,
    key: str = "dataset",
    done: dict[str, dict] | None = None,
    on_batch: Callable[[dict[str, dict]], None] | None = None,
    progress: bool = False,
    only: Sequence[int] | None = None,
) -> dict[str, dict]:
    """Per-batch results for all batches ({str(batch id): result}), gathered across ranks;
    `only`: just these batch ids (an array-job shard's), each still seeded by its global id."""
    rank, world = D.world()
    batches = [
        list(indices[i : i + protocol.batch_size])
        for i in range(0, len(indices), protocol.batch_size)
    ]
    wanted = list(range(len(batches))) if only is None else sorted(only)
    done = {b: r for b, r in (done or {}).items() if int(b) in wanted}
    mine = [b for b in D.shard(wanted, rank, world) if str(b) not in done]
    local: dict[str, dict] = {}
    device = zs.device
    if mine:
        loader = DataLoader(
            dataset,
            batch_sampler=[batches[b] for b in mine],
            num_workers=protocol.num_workers,
            collate_fn=functools.partial(collate_labelled, what=f"dataset '{key}'"),
        )
        bar = None
        if progress and rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(mine), desc=key, unit="batch", leave=False)
        try:
            for b, (x, y) in zip(mine, loader):
                x = x.to(device=device, dtype=torch.float32)
                y = torch.as_tensor(y).to(device)
                local[str(b)] = run_batch(zs, x, y, plan, protocol, key, b)
                if on_batch is not None:
                    on_batch(local)
                if bar is not None:
                    bar.update(1)
        finally:  # an error message must not land on the progress bar's line
            if bar is not None:
                bar.close()
    merged = dict(done)
    for part in D.all_gather(local):
        merged.update(part)
    missing = [b for b in wanted if str(b) not in merged]
    if missing:
        raise ClipxError(f"{key}: batches {missing[:5]} were not evaluated")
    return merged


def flatten(batch_results: dict[str, dict], plan: list[PlannedAttack]) -> dict[str, Any]:
    """Per-sample flags in sample order: {'clean': '0101', 'attacks': {key: '0101'}}, the labels
    (absent when a batch was resumed from a file written before labels were kept), plus
    'attack_info': {key: summary} for text attacks (the first batch that ran them)."""
    order = sorted(batch_results, key=int)
    info: dict[str, Any] = {}
    for b in order:
        for key, summary in batch_results[b].get("info", {}).items():
            info.setdefault(key, summary)
    labels = [batch_results[b].get("labels") for b in order]
    return {
        "clean": "".join(batch_results[b]["clean"] for b in order),
        **({"labels": sum(labels, [])} if all(x is not None for x in labels) else {}),
        "attacks": {
            p.key: "".join(batch_results[b]["attacks"][p.key] for b in order) for p in plan
        },
        "attack_info": info,
    }


def summarize(
    samples: dict[str, Any], plan: list[PlannedAttack], protocol: Protocol
) -> list[dict[str, Any]]:
    """One summary per eps (one in all for a clean-only protocol); accuracies in percent."""
    clean = torch.tensor(R.unbits(samples["clean"]), dtype=torch.bool)
    n = len(clean)
    pct = (lambda t: round(100.0 * float(t.float().mean()), 4)) if n else (lambda t: float("nan"))
    budgets: list[float | None] = list(protocol.eps) if plan else [None]
    out = []
    for eps in budgets:
        chosen = [p for p in plan if p.eps is None or p.eps == eps]
        robust = clean.clone()
        per_attack = {}
        info = samples.get("attack_info", {})
        attack_info = {p.label: info[p.key] for p in chosen if p.key in info}
        for p in chosen:
            flags = torch.tensor(R.unbits(samples["attacks"][p.key]), dtype=torch.bool) & clean
            per_attack[p.label] = pct(flags)
            robust &= flags
        clean_acc = pct(clean)
        robust_acc = pct(robust) if chosen else None
        n_clean = int(clean.sum())
        out.append(
            {
                "eps": eps,
                "eps_str": None if eps is None else eps_label(eps),
                "norm": protocol.norm,
                "n": n,
                "clean_acc": clean_acc,
                "robust_acc": robust_acc,
                "per_attack": per_attack,
                "attack": "+".join(p.label for p in chosen) or "clean",
                "attacks": [p.describe() for p in chosen],
                "attack_info": attack_info,
                "drop": None if robust_acc is None else round(clean_acc - robust_acc, 4),
                "asr": None
                if robust_acc is None or n_clean == 0
                else round(100.0 * int((clean & ~robust).sum()) / n_clean, 4),
                "units": R.UNITS,
            }
        )
    return out


def _testtime_record(spec: dict[str, Any], defense: Any) -> dict[str, Any]:
    """What a defended record stores about its test-time defense."""
    return {**spec, "config": defense.config() if hasattr(defense, "config") else {}}


class _Checkpoint:
    """Writes this rank's finished batches at most every `every_s` seconds (atomically), with
    the batches earlier runs finished: a second kill during a resumed run loses none of them."""

    def __init__(self, path, phash: str, every_s: float, done: dict[str, dict] | None = None):
        self.path, self.phash, self.every_s, self.last = path, phash, every_s, time.time()
        self.done = dict(done or {})

    def __call__(self, local: dict[str, dict]) -> None:
        if time.time() - self.last >= self.every_s:
            batches = {**self.done, **local}
            R.write_result(
                self.path, {"schema": R.SCHEMA, "protocol_hash": self.phash, "batches": batches}
            )
            self.last = time.time()


# -- public entry points ------------------------------------------------------------------------
def evaluate_model(
    zs: ZeroShotClassifier,
    dataset,
    protocol: Protocol | dict | str,
    *,
    indices: Sequence[int] | None = None,
    dataset_key: str = "dataset",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """No files: clean/robust accuracy (percent) per eps of `zs` on `dataset` (trainer's periodic
    evaluation). `indices` default: protocol.n_samples drawn with protocol.seed."""
    protocol = protocol_from_dict(protocol)
    if protocol.testtime:  # the defended labels and both attack modes need evaluate()'s records
        raise ClipxUsageError(
            "test-time defenses are evaluated by evaluate(), not evaluate_model()"
        )
    start = time.time()
    if indices is None:
        indices = sample_indices(len(dataset), protocol.n_samples, protocol.seed)
    was_training = zs.training
    zs.eval()
    try:
        randomized = len(indices) > 0 and not deterministic(
            zs, probe_images(dataset, indices, zs.device, f"dataset '{dataset_key}'")
        )
        plan = plan_attacks(zs, protocol, dataset_key, randomized)
        for p in plan:
            p.draws = protocol.final_draws if randomized else 1
        samples = flatten(
            run_samples(zs, dataset, indices, protocol, plan, key=dataset_key, progress=progress),
            plan,
        )
    finally:
        zs.train(was_training)
    out = summarize(samples, plan, protocol)
    for rec in out:
        rec.update(
            protocol=protocol.name,
            dataset=dataset_key,
            seed=protocol.seed,
            elapsed_s=round(time.time() - start, 3),
        )
    return out


def evaluate(
    loaded: LoadedCLIP,
    protocol: Protocol | dict | str,
    run_dir,
    label: str = "model",
    resume: bool = True,
    progress: bool = True,
    checkpoint_s: float = 30.0,
    shard: Any = None,
) -> list[dict[str, Any]]:
    """Evaluate `loaded` under `protocol`; one JSON result per dataset under run_dir/eval.

    Datasets whose result file matches the protocol settings and model weights are skipped (and
    their records returned); interrupted datasets continue from their finished batches. Under
    torchrun, srun or accelerate (several processes) batches are sharded across ranks and rank 0
    writes the files. `shard` (evaluation/shards.py): only that array-job shard's batches, written
    as parts for `clipx eval-merge` (returns no records).
    Returns one record per (dataset, eps); see records.FORMULAS for the definitions."""
    protocol = protocol_from_dict(protocol)
    check_weights(loaded.model.named_parameters(), f"model '{label}'")
    custom = getattr(protocol, "evaluate_with", None)
    if custom is not None and shard is not None:
        raise ClipxUsageError(
            f"--shard: protocol '{protocol.name}' is not per-sample classification and is not "
            "sharded; run it without --shard"
        )
    if custom is not None:  # protocols that are not per-sample classification (e.g. retrieval)
        return custom(loaded, run_dir, label, resume=resume, progress=progress)
    with accelerated(loaded, protocol.channels_last, protocol.compile) as fast:
        out: list[dict[str, Any]] = []
        for spec in [None, *protocol.testtime]:  # the same model behind each test-time defense
            out += _evaluate(
                fast, protocol, run_dir, label, resume, progress, checkpoint_s, spec, shard
            )
        return out


@dataclass
class _Evaluation:
    """What every dataset of one evaluation (one model, maybe behind a test-time defense) shares."""

    loaded: LoadedCLIP
    protocol: Protocol
    run_dir: Any
    label: str
    base_label: str
    resume: bool
    progress: bool
    checkpoint_s: float
    testtime: dict[str, Any] | None
    defense: Any
    fingerprint: str
    stamp: dict[str, Any]
    rank: int
    world: int
    shard: Any = None  # evaluation/shards.py: only this shard's batches, written as a part


def _evaluate(
    loaded: LoadedCLIP,
    protocol: Protocol,
    run_dir,
    label: str,
    resume: bool,
    progress: bool,
    checkpoint_s: float,
    testtime: dict[str, Any] | None = None,
    shard: Any = None,
) -> list[dict[str, Any]]:
    rank, world = D.maybe_init()
    full_label, defense = label, None
    if testtime is not None:
        full_label = f"{label}+{testtime['label']}"
        defense = build_testtime(testtime)
    fingerprint = R.model_fingerprint(loaded.model)
    run = _Evaluation(
        loaded, protocol, run_dir, full_label, label, resume, progress, checkpoint_s,
        testtime, defense, fingerprint, versions(), rank, world, shard,
    )  # fmt: skip
    out: list[dict[str, Any]] = []
    for spec in protocol.datasets:
        out.extend(_evaluate_dataset(run, spec))
    return out


def _evaluate_dataset(run: _Evaluation, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One dataset's records: reused from its result file, or computed (resuming the batches a
    crashed run finished) and written."""
    protocol, key = run.protocol, dataset_key(spec)
    inputs, phash, path = _dataset_identity(run, spec, key)
    reused = _reused_records(run, key, inputs, phash, path)
    if reused is not None:
        return [] if run.shard else reused
    start, cpu_start = time.time(), time.process_time()
    ds, indices = protocol_samples(protocol, spec)
    if len(ds) == 0:
        raise ClipxUsageError(f"dataset '{spec['dataset']}' ({key}) is empty: 0 samples")
    only = None if run.shard is None else run.shard.assigned(run.label, key)
    if only is not None and not only:
        return []  # another shard's dataset
    attacked = list(ds[indices[0]][0].shape[-2:]) if len(indices) else None
    scored, plan, pipeline = _scored_plan(run, ds, spec, key, indices)
    done = _finished_batches(run, key, path, phash)
    checkpoint = _Checkpoint(R.partial_path(path, run.rank), phash, run.checkpoint_s, done)
    batch_results = run_samples(
        scored,
        ds,
        indices,
        protocol,
        plan,
        key=key,
        done=done,
        on_batch=checkpoint,
        progress=run.progress,
        only=only,
    )
    elapsed = round(time.time() - start, 3)
    cost = {"cpu_s": time.process_time() - cpu_start, "wall_s": elapsed}
    fields = _record_fields(run, spec, key, phash, ds, attacked, elapsed)
    fields["pipeline"] = pipeline  # the determinism probe's finding (randomness.py)
    if run.shard is not None:
        part = {"path": path, "protocol_hash": phash, "key": inputs, "dataset_key": key}
        run.shard.write_part(run, part, indices, plan, batch_results, fields)
        D.barrier()
        return []
    samples = flatten(batch_results, plan)
    stamp = provenance_stamp(**cost)
    records = [{**rec, **fields, "provenance": stamp} for rec in summarize(samples, plan, protocol)]
    if run.rank == 0:
        samples = {"indices": list(indices), **samples}
        result = result_document(phash, inputs, key, records, samples)
        _write_dataset(run, path, key, result, elapsed, len(done))
    D.barrier()
    return records


def result_document(
    phash: str, inputs: dict, key: str, records: list[dict[str, Any]], samples: dict[str, Any]
) -> dict[str, Any]:
    """A finished dataset's result file: its records and per-sample flags (also what
    `clipx eval-merge` writes from shards)."""
    return {
        "schema": R.SCHEMA,
        "protocol_hash": phash,
        "key": inputs,
        "label": records[0]["label"],
        "protocol": records[0]["protocol"],
        "dataset_key": key,
        "records": records,
        "samples": samples,
    }


def _dataset_identity(run: _Evaluation, spec: dict[str, Any], key: str) -> tuple[dict, str, Any]:
    """(the inputs a result depends on, their hash, the result file)."""
    # a named split ("unseen") is keyed on the class names it resolves to, not its name
    split = open_eval_dataset(spec).description if restricts(spec) else None
    inputs = evaluation_key(run.protocol, spec, run.fingerprint, split)
    if run.testtime is not None:
        inputs["testtime"] = {
            **run.testtime,
            "code": digest(component_fingerprint("testtime", run.testtime["name"])),
        }
    phash = run.protocol.dataset_hash(spec, {"model": run.fingerprint, "inputs": digest(inputs)})
    return inputs, phash, R.result_path(run.run_dir, run.label, run.protocol.name, key)


def _reused_records(
    run: _Evaluation, key: str, inputs: dict, phash: str, path: Any
) -> list[dict[str, Any]] | None:
    """The records of a result file computed from the same inputs (rank 0 decides), or None."""
    existing = R.read_json(path) if run.resume else None
    reuse = bool(
        existing
        and existing.get("schema") == (run.shard.SCHEMA if run.shard else R.SCHEMA)
        and existing.get("protocol_hash") == phash
        and (run.shard is None or run.shard.same_batches(existing, run.label, key))
    )
    if existing and not reuse and run.rank == 0:
        why = ", ".join(changed(existing.get("key"), inputs)[:6])
        _log(f"{run.label}: {key}: recomputing, its inputs changed ({why})")
    reuse = D.broadcast(reuse)
    if not reuse:
        return None
    existing = existing or R.read_json(path)  # rank 0 decided; every rank reads the file
    if run.rank == 0:
        _note(run, "skipped", key)
    return existing.get("records", [])


def _scored_plan(
    run: _Evaluation, ds: Any, spec: dict[str, Any], key: str, indices: Sequence[int]
) -> tuple[nn.Module, list[PlannedAttack], dict[str, Any]]:
    """The classifier the samples are scored on (behind the test-time defense, if any), the
    attack plan, and what the determinism probe found (randomness.py)."""
    protocol = run.protocol
    zs = build_classifier(run.loaded, ds.classnames, protocol.templates_for(spec))
    zs.class_matrix()  # computed once here, reused by every batch and attack
    defended = None if run.defense is None else DefendedClassifier(zs, run.defense, run.label)
    scored = defended or zs
    x = probe_images(ds, indices, zs.device, f"dataset '{key}'") if len(indices) else None
    random_zs = x is not None and not deterministic(zs, x)
    random_scored = (
        random_zs if defended is None else x is not None and not deterministic(defended, x)
    )
    if not protocol.testtime:
        plan = plan_attacks(zs, protocol, key, random_zs)
    else:
        plan = plan_modes(zs, defended, protocol, key, (random_zs, random_scored))
    for p in plan:
        p.draws = protocol.final_draws if random_scored else 1
    early_exit = protocol.early_exit and protocol.takes("early_exit")
    record = pipeline_record(
        not random_scored, protocol.eot_samples, protocol.final_draws, early_exit
    )
    if random_scored and run.rank == 0:
        _log(
            f"{run.label}: {key}: the pipeline is not deterministic (two passes differ): early "
            f"exit off, EOT-{protocol.eot_samples}, worst of {protocol.final_draws} final draws"
        )
    return scored, plan, record


def _finished_batches(run: _Evaluation, key: str, path: Any, phash: str) -> dict[str, dict]:
    """Batches an interrupted run of the same inputs finished (its partial files)."""
    done: dict[str, dict] = {}
    if run.resume:
        for part in R.partial_paths(path):
            data = R.read_json(part)
            if data and data.get("protocol_hash") == phash:
                done.update(data.get("batches", {}))
    if done and run.rank == 0:
        _note(run, "resumed", key, batches_done=len(done))
    return done


def _record_fields(
    run: _Evaluation,
    spec: dict[str, Any],
    key: str,
    phash: str,
    ds: Any,
    attacked: list[int] | None,
    elapsed: float,
) -> dict[str, Any]:
    """What each record of a dataset carries besides its accuracies."""
    protocol, testtime = run.protocol, run.testtime
    return {
        "schema": R.SCHEMA,
        "protocol": protocol.name,
        "protocol_hash": phash,
        "label": run.label,
        **(
            {"base_label": run.base_label, "testtime": _testtime_record(testtime, run.defense)}
            if testtime
            else {}
        ),
        "model": {
            "arch": run.loaded.arch,
            "pretrained": run.loaded.pretrained,
            "fingerprint": run.fingerprint,
        },
        "dataset": spec["dataset"],
        "split": spec.get("split", "test"),
        "dataset_key": key,
        "dataset_params": {
            k: v
            for k, v in spec.items()
            if k not in ("dataset", "split", "n", "templates", "resolution")
        },
        "n_classes": len(ds.classnames),
        "class_split": getattr(ds, "description", None),
        "seed": protocol.seed,
        "templates": protocol.templates_for(spec),
        "attack_resolution": attacked,  # (H, W) the attack and eps apply at
        "lineage": protocol.lineage,
        "precision": protocol.precision,
        "batch_size": protocol.batch_size,
        "world_size": run.world,
        "formulas": R.FORMULAS,
        "versions": run.stamp,
        "elapsed_s": elapsed,
        "computed_at": R.now(),
        "protocol_params": protocol.to_dict(),
    }


def _write_dataset(
    run: _Evaluation, path: Any, key: str, result: dict[str, Any], elapsed: float, reused: int
) -> None:
    """Rank 0: the dataset's result file; its partial files go, the event log notes it."""
    R.write_result(path, result)
    for part in R.partial_paths(path):
        part.unlink(missing_ok=True)
    _note(run, "computed", key, elapsed_s=elapsed, batches_reused=reused)


def _note(run: _Evaluation, event: str, key: str, **extra: Any) -> None:
    """One line of the run dir's event log about a dataset of this evaluation."""
    R.log_event(
        run.run_dir, event=event, label=run.label, protocol=run.protocol.name, dataset=key, **extra
    )
