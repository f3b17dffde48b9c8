"""Evaluation protocols: the threat model, attacks, samples, templates and datasets of one table.

A protocol is plain data so that it can be written next to every result, hashed for resuming,
and built from a recipe's `[evaluate]` table. Named presets are registered through the
`register_evaluators` hook (`register(name, factory, description)`, `factory(**overrides)`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import ClipxUsageError, closest
from ..registry import get, names
from ..utils.eps import format_eps, parse_eps
from ..utils.eps import resolve_budget_expr as resolve_budget_expr  # re-exported (engine)

NORMS = ("Linf", "L2", "L1")
PRECISIONS = ("fp32", "model")  # fp32: attacks must run in fp32; model: whatever the model is
_ATTACK_KEYS = ("name", "params", "label")
_DATASET_KEYS_RESERVED = ("dataset", "split", "n", "templates", "resolution")
NATIVE = "native"
CHECK_LEVELS = ("off", "basic", "full")


def _attack_spec(item: Any) -> dict[str, Any]:
    """'pgd' | {name, params?, label?, **params} -> {name, params, label}."""
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ClipxUsageError(f"attack must be a name or a table with 'name', got {item!r}")
    params = dict(item.get("params") or {})
    if not isinstance(params, dict):
        raise ClipxUsageError(f"attack '{item['name']}': params must be a table")
    extra = {k: v for k, v in item.items() if k not in _ATTACK_KEYS}
    params.update(extra)
    if "eps" in params:
        raise ClipxUsageError(
            f"attack '{item['name']}': set budgets with the protocol's eps list, not in attack params"
        )
    label = item.get("label") or item["name"]
    return {"name": item["name"], "params": params, "label": str(label)}


def _dataset_spec(item: Any) -> dict[str, Any]:
    """'cifar10' | {dataset, split?, n?, templates?, **factory kwargs} -> dict with split."""
    if isinstance(item, str):
        item = {"dataset": item}
    if not isinstance(item, dict) or not isinstance(item.get("dataset"), str):
        raise ClipxUsageError(f"dataset must be a name or a table with 'dataset', got {item!r}")
    out = dict(item)
    out.setdefault("split", "test")
    n = out.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
        raise ClipxUsageError(
            f"dataset '{out['dataset']}': n must be a positive integer, got {n!r}"
        )
    return out


def dataset_key(spec: dict[str, Any]) -> str:
    """File-name-safe identity of a dataset spec: name, split, and a hash of other factory args,
    the folder or file it reads included (two image folders evaluated under one dataset name are
    two results, not one replacing the other)."""
    from ..data.splits import subset_tag

    kwargs = {
        k: _where(v) if k in ("root", "path") else v
        for k, v in spec.items()
        if k not in _DATASET_KEYS_RESERVED
        and k != "download"
        and not (k in ("root", "path") and v is None)
    }
    key = f"{spec['dataset']}_{spec.get('split', 'test')}"
    if subset_tag(spec):  # seen / unseen classes, held-out part: readable in file names and tables
        key += "_" + subset_tag(spec)
        named = {"label_space", "holdout"} | (
            {"classes"} if isinstance(spec.get("classes"), str) else set()
        )
        kwargs = {k: v for k, v in kwargs.items() if k not in named}  # the tag says these
    if kwargs:
        key += "_" + hashlib.sha256(_canonical(kwargs).encode()).hexdigest()[:8]
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in key)


def _where(path: Any) -> Any:
    return os.path.realpath(os.path.expanduser(path)) if isinstance(path, str) else path


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


@dataclass
class Protocol:
    """One evaluation setting; budgets are floats in [0, 1] pixel space, accuracies in percent."""

    name: str = "custom"
    attacks: list[dict[str, Any]] = field(default_factory=list)
    eps: list[float] = field(default_factory=lambda: [1 / 255])
    norm: str = "Linf"
    n_samples: int | None = None  # per dataset, drawn with `seed`; None = the whole split
    seed: int = 0
    templates: str | list[str] | dict[str, list[str]] = "tecoa"
    datasets: list[Any] = field(default_factory=lambda: ["cifar10"])
    batch_size: int = 64
    precision: str = "fp32"
    backend: str | None = None  # default backend for attacks that offer several (autoattack)
    num_workers: int = 0
    description: str = ""
    # speed options for the image tower, off by default (other kernels: not bitwise eager fp32);
    # see models/accelerate.py and `python -m benchmarks.run --only options`
    channels_last: bool = False
    compile: bool = False
    # worst case over attacks as AutoAttack computes it: each attack only on the samples that
    # survived the earlier ones at the same budget (same robust accuracy, far fewer attack steps;
    # per-attack numbers become cumulative: robust to this attack and every earlier one)
    cascade: bool = False
    # each sample leaves a PGD attack at its first misclassified iterate and the batch shrinks
    # (attacks/pgd.py): robust accuracy = "no adversarial example among the k + 1 iterates",
    # never above the final-iterate number, at a fraction of the steps. Off = torchattacks'
    # final iterate (the TeCoA-lineage presets). Attacks without the option ignore it (AutoAttack
    # keeps each point's best iterate anyway). Applies to attacks registered with
    # protocol_params containing "early_exit".
    early_exit: bool = True
    # the evaluation code this preset follows (resolution, templates, samples, attacks), stored
    # with every result; docs/FIDELITY.md#protocol-presets
    lineage: str = ""
    # resolution the images are attacked at: None = each dataset as its loader gives it (the
    # registry's suite follows the TeCoA lineage: CIFAR/STL/Tiny-ImageNet native, others 224);
    # an int = resize every dataset's images to that square size first (bicubic) so eps is
    # measured there; a table {dataset: int | "native"} per dataset; a dataset entry's own
    # `resolution` key wins. The model upsamples to its input size inside forward either way.
    resolution: int | str | dict[str, int | str] | None = None
    # attack-strength checks written into the result card (evaluation/strength.py): "off",
    # "basic" (from the results, plus gradients / randomness / loss curve on `checks_n` inputs)
    # or "full" (also Square and a large-eps attack on those inputs); strict = a failed check
    # is an error (leaderboard submissions). Not part of any result hash: they add no numbers.
    checks: str = "basic"
    checks_n: int = 16
    checks_strict: bool = False
    # test-time defenses (evaluation/testtime.py): each model is scored as is and once behind
    # each of these (label `<model>+<defense label>`), its attacks run in `testtime_modes`
    testtime: list[Any] = field(default_factory=list)
    testtime_modes: list[str] = field(default_factory=lambda: ["non-adaptive", "adaptive"])

    def __post_init__(self) -> None:
        if isinstance(self.eps, (int, float, str)):
            self.eps = [self.eps]
        self.eps = [parse_eps(e) for e in self.eps]
        if not self.eps:
            raise ClipxUsageError(f"protocol '{self.name}': eps list is empty")
        if self.norm not in NORMS:
            raise ClipxUsageError(
                f"protocol '{self.name}': norm must be one of {NORMS}, got {self.norm!r}"
            )
        if isinstance(self.attacks, (str, dict)):
            self.attacks = [self.attacks]
        self.attacks = [_attack_spec(a) for a in self.attacks]
        labels = [a["label"] for a in self.attacks]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ClipxUsageError(
                f"protocol '{self.name}': attacks {dup} appear twice; give each a distinct 'label'"
            )
        if isinstance(self.datasets, (str, dict)):
            self.datasets = [self.datasets]
        self.datasets = [_dataset_spec(d) for d in self.datasets]
        if not self.datasets:
            raise ClipxUsageError(f"protocol '{self.name}': no datasets")
        keys = [dataset_key(d) for d in self.datasets]
        if len(set(keys)) != len(keys):
            raise ClipxUsageError(f"protocol '{self.name}': a dataset is listed twice ({keys})")
        for attr, lo in (("batch_size", 1), ("num_workers", 0)):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ClipxUsageError(f"protocol '{self.name}': {attr} must be an integer >= {lo}")
        if self.n_samples is not None and (
            isinstance(self.n_samples, bool)
            or not isinstance(self.n_samples, int)
            or self.n_samples <= 0
        ):
            raise ClipxUsageError(
                f"protocol '{self.name}': n_samples must be a positive integer or omitted"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ClipxUsageError(f"protocol '{self.name}': seed must be an integer")
        if self.checks not in CHECK_LEVELS:
            raise ClipxUsageError(
                f"protocol '{self.name}': checks must be one of {CHECK_LEVELS}, got {self.checks!r}"
            )
        if (
            isinstance(self.checks_n, bool)
            or not isinstance(self.checks_n, int)
            or self.checks_n < 1
        ):
            raise ClipxUsageError(f"protocol '{self.name}': checks_n must be an integer >= 1")
        for attr in ("channels_last", "compile", "cascade", "checks_strict", "early_exit"):
            if not isinstance(getattr(self, attr), bool):
                raise ClipxUsageError(f"protocol '{self.name}': {attr} must be true or false")
        if self.precision not in PRECISIONS:
            raise ClipxUsageError(f"protocol '{self.name}': precision must be one of {PRECISIONS}")
        if not isinstance(self.templates, (str, list, tuple, dict)):
            raise ClipxUsageError(f"protocol '{self.name}': templates must be a set name or a list")
        if isinstance(self.templates, tuple):
            self.templates = list(self.templates)
        per_dataset = self.resolution if isinstance(self.resolution, dict) else {}
        for where, value in [("resolution", self.resolution), *per_dataset.items()]:
            if not isinstance(value, dict):
                _check_resolution(value, f"protocol '{self.name}': {where}")
        for spec in self.datasets:
            _check_resolution(spec.get("resolution"), f"dataset '{spec['dataset']}': resolution")
        self._check_testtime()

    def _check_testtime(self) -> None:
        from .testtime import build_testtime, check_modes, testtime_spec

        if isinstance(self.testtime, (str, dict)):
            self.testtime = [self.testtime]
        if not isinstance(self.testtime, (list, tuple)):
            raise ClipxUsageError(f"protocol '{self.name}': testtime must be a list of defenses")
        self.testtime = [testtime_spec(t) for t in self.testtime]
        for spec in self.testtime:  # unknown names and parameters fail here, before anything runs
            build_testtime(spec)
        labels = [t["label"] for t in self.testtime]
        if len(set(labels)) != len(labels):
            raise ClipxUsageError(
                f"protocol '{self.name}': test-time defenses {labels} share a label; give each a distinct 'label'"
            )
        self.testtime_modes = check_modes(self.testtime_modes, f"protocol '{self.name}'")

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def with_overrides(self, **overrides: Any) -> Protocol:
        """A copy with fields replaced; unknown keys are usage errors naming the closest field."""
        fields = self.field_names()
        for key in overrides:
            if key not in fields:
                raise ClipxUsageError(
                    f"protocol '{self.name}': unknown setting '{key}'{closest(key, fields)}; "
                    f"settings: {', '.join(fields)}"
                )
        data = copy.deepcopy(self.to_dict())
        data.update(copy.deepcopy(overrides))
        return type(self)(**data)  # subclasses (e.g. retrieval protocols) keep their type

    def to_dict(self) -> dict[str, Any]:
        return {f: copy.deepcopy(getattr(self, f)) for f in self.field_names()}

    # -- per-dataset view -------------------------------------------------------------------
    def n_for(self, spec: dict[str, Any]) -> int | None:
        return spec.get("n", self.n_samples)

    def templates_for(self, spec: dict[str, Any]) -> Any:
        return spec.get("templates", self.templates)

    def resolution_for(self, spec: dict[str, Any]) -> int | None:
        """The square size images of this dataset are resized to before the attack, or None to
        attack them as loaded (see the `resolution` field)."""
        value = spec.get("resolution")
        if value is None and isinstance(self.resolution, dict):
            value = self.resolution.get(spec["dataset"])
        elif value is None:
            value = self.resolution
        return None if value in (None, NATIVE) else int(value)

    def attacked_resolution(self, spec: dict[str, Any]) -> int | str:
        """What resolution eps is measured at for this dataset: the size set here, else the
        registry suite's loader size (NATIVE for CIFAR/STL/Tiny-ImageNet), else "as loaded"."""
        size = self.resolution_for(spec)
        if size is not None:
            return size
        from ..data.suite import suite_names  # torchvision: imported only when asked

        if spec["dataset"] in suite_names():
            from ..data.suite import suite_entry

            return suite_entry(spec["dataset"]).image_size or NATIVE
        return "as loaded"

    def dataset_hash(self, spec: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
        """What a per-dataset result depends on (not the other datasets, workers or wording)."""
        content = {
            "name": self.name,
            "attacks": self.attacks,
            "eps": [round(e, 10) for e in self.eps],
            "norm": self.norm,
            "n": self.n_for(spec),
            "seed": self.seed,
            "templates": self.templates_for(spec),
            "dataset": {k: v for k, v in spec.items() if k not in ("root", "download")},
            "batch_size": self.batch_size,
            "precision": self.precision,
            "backend": self.backend,
            # only when on, so results computed before these options existed stay reusable
            **{k: True for k in ("channels_last", "compile", "cascade") if getattr(self, k)},
            **({"early_exit": True} if self.early_exit and self.takes("early_exit") else {}),
            **({"resolution": size} if (size := self.resolution_for(spec)) is not None else {}),
            **({"testtime_modes": self.testtime_modes} if self.testtime else {}),
            **(extra or {}),
        }
        return hashlib.sha256(_canonical(content).encode()).hexdigest()[:16]

    def takes(self, setting: str) -> bool:
        """Whether an attack of this protocol takes `setting` from it (its protocol_params);
        an attack not registered (yet) counts as taking it."""

        for spec in self.attacks:
            try:
                if setting in get("attacks", spec["name"]).protocol_params:
                    return True
            except ClipxUsageError:
                return True
        return False

    def summary(self) -> str:
        atk = ", ".join(a["label"] for a in self.attacks) or "clean only"
        eps = ", ".join(eps_label(e) for e in self.eps)
        return f"{self.name}: {atk}; {self.norm} eps {eps}; n={self.n_samples or 'all'}; seed {self.seed}"


def _check_resolution(value: Any, where: str) -> None:
    ok = value is None or value == NATIVE
    ok = ok or (isinstance(value, int) and not isinstance(value, bool) and 8 <= value <= 4096)
    if not ok:
        raise ClipxUsageError(
            f"{where} must be a size in pixels (8..4096) or 'native', got {value!r}"
        )


# -- registry access ----------------------------------------------------------------------------
def protocol_names() -> list[str]:

    return names("evaluators")


def get_protocol(name: str, **overrides: Any) -> Protocol:
    """A registered preset with overrides applied (unknown settings are usage errors)."""

    entry = get("evaluators", name)
    proto = entry.obj(**overrides)
    if not isinstance(proto, Protocol):
        raise ClipxUsageError(f"evaluation protocol '{name}' did not build a Protocol")
    return proto


def protocol_from_dict(data: dict[str, Any] | Protocol | str) -> Protocol:
    """A recipe `[evaluate]` table: {protocol = preset name, **overrides}, or full fields."""
    if isinstance(data, Protocol):
        return data
    if isinstance(data, str):
        return get_protocol(data)
    if not isinstance(data, dict):
        raise ClipxUsageError(f"evaluation settings must be a table, got {type(data).__name__}")
    data = dict(data)
    preset = data.pop("protocol", None)
    if preset is None:
        return Protocol().with_overrides(**data)
    return get_protocol(preset, **data)


def eps_label(eps: float) -> str:
    """'4/255', '0.5/255' for budgets on a 1/1000-of-1/255 grid, else the float."""
    k = eps * 255
    if abs(k - round(k, 3)) < 1e-6:
        return f"{round(k, 3):g}/255"
    return format_eps(eps)
