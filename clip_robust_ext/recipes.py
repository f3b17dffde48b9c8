"""Recipes: TOML files that compose registered components by name (schema in docs/PLUGINS.md).

Resolution = base recipe, deep-merged with the selected profile, then `--set key=value`
overrides, then validation: every key is checked against the schema, the registries and the
signatures of the factories it goes to, so a typo fails before any work starts, naming the
dotted key and the closest valid one. The resolved recipe says where every value goes
(`defense.train` -> TrainConfig, `defense.params` -> the defense factory) and is itself a valid
recipe, so `clipx recipe run runs/x/recipe.resolved.toml` repeats a run. Recipes never run code:
no eval, no import paths, only registry names.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

try:  # Python 3.11+
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10 with the tomli backport
    import tomli as tomllib

from .errors import ClipxUsageError, closest, unknown_name
from .evaluation import Protocol, protocol_from_dict
from .params import budget_text as _budget_text
from .params import check_kwargs as _factory_kwargs
from .params import coerce
from .params import dataclass_fields as _dataclass_fields
from .params import is_eps_like as _is_eps_like
from .params import signature_of as _signature
from .params import types_from_defaults as _types_from_defaults
from .params import unknown_key as _unknown_key
from .params.values import (
    check_dataset_params,
    check_device,
    check_device_params,
    check_iterations,
    check_label,
    check_name_length,
    check_seed,
    check_template,
)
from .registry import entries
from .run.layout import START_LABEL

STAGES = ("pretrain", "defend", "evaluate")
UNDERFLOW = "is not zero but is 0.0 as a float; write 0, or a value >= 1.2e-38"
SECTIONS = ("recipe", "model", "data", "pretrain", "defense", "baselines", "evaluate", "profiles")
RECIPE_KEYS = ("name", "description", "seed", "seeds", "stages", "device", "profile")
METHOD_KEYS = ("name", "label", "train", "params")  # + TrainConfig fields + factory parameters
RESERVED_LABELS = (START_LABEL, "eval")  # the start model's label; the evaluation folder
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


# --------------------------------------------------------------------------------------------
# finding and reading recipes


def shipped_recipe_dirs() -> list[Path]:
    """recipes/ next to the package (editable install / checkout), and `clipx_recipes` if
    installed (a wheel installs recipes/*.toml under that name, as a namespace package)."""
    import importlib.util

    dirs = [Path(__file__).resolve().parent.parent / "recipes"]
    spec = importlib.util.find_spec("clipx_recipes")
    dirs += [Path(d) for d in (spec.submodule_search_locations or [])] if spec else []
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and d not in seen:
            seen.append(d)
    return seen


def register_shipped(register) -> None:
    """For the built-in plugin's register_recipes hook: every shipped recipes/*.toml."""
    done = set()
    for folder in shipped_recipe_dirs():
        for path in sorted(folder.glob("*.toml")):
            if path.stem in done:
                continue
            done.add(path.stem)
            register(path.stem, path, description=_description_of(path))


def _description_of(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            return str(tomllib.load(fh).get("recipe", {}).get("description", ""))
    except (OSError, tomllib.TOMLDecodeError, AttributeError):
        return "(unreadable recipe)"


def find_recipe(name_or_path: str | Path) -> Path:
    """A registered recipe name, or a path to a .toml file."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if text.endswith(".toml") or path.is_file():
        if not path.is_file():
            why = _not_a_file(path)
            raise ClipxUsageError(f"{why}: {text}" if why else f"recipe file not found: {text}")
        return path
    known = entries("recipes")
    if text not in known:
        raise unknown_name("recipe", text, known)
    return Path(known[text].obj)


def _not_a_file(path: Path) -> str:
    """Why a recipe path is not a readable file: missing, a folder, a FIFO, a symlink loop."""
    import stat

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "recipe file is a broken symlink" if path.is_symlink() else ""
    except OSError as exc:  # ELOOP: a symlink loop
        return f"cannot open the recipe file ({exc.strerror or exc})"
    if stat.S_ISDIR(mode):
        return "recipe path is a directory, not a file"
    return "recipe path is not a regular file (a FIFO, socket or device)"


MAX_NESTING = 64  # tables and arrays: far beyond any recipe, far below Python's recursion limit


def nesting_depth(obj: Any) -> int:
    """How deeply tables and arrays nest in a parsed TOML value (iterative: no recursion)."""
    deepest, stack = 0, [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        )
        stack.extend((child, depth + 1) for child in children)
    return deepest


class _Underflow(ValueError):
    """A TOML number that is not zero as written but is 0.0 as a float (1e-400)."""


def _toml_float(text: str) -> float:
    value = float(text)
    if value == 0 and any(c in "123456789" for c in text.lower().split("e")[0]):
        raise _Underflow(text)
    return value


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file; nesting deeper than MAX_NESTING is refused whatever the interpreter's
    recursion limit (a test suite or torch.compile may have raised it)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh, parse_float=_toml_float)
    except _Underflow as exc:
        raise ClipxUsageError(f"{path}: number {exc} {UNDERFLOW}") from None
    except RecursionError:
        data = None
    except tomllib.TOMLDecodeError as exc:
        raise ClipxUsageError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ClipxUsageError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise ClipxUsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if data is None or nesting_depth(data) > MAX_NESTING:
        raise ClipxUsageError(f"{path}: invalid TOML: nested too deeply")
    return data


# --------------------------------------------------------------------------------------------
# merging and --set


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; any other value (arrays included) replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


IDENTITY_KEYS = {
    "model": "source",
    "data": "dataset",
    "pretrain": "name",
    "defense": "name",
    "evaluate": "protocol",
}


def merge_profile(base: dict[str, Any], profile: dict[str, Any], name: str = "") -> dict[str, Any]:
    """deep_merge, with two exceptions: `unset = ["defense.max_steps", "baselines.0.n", ...]` in
    the profile first removes those keys from the base (a CPU-sized step cap has no place in a
    paper profile); and a section whose component changes (model.source, data.dataset,
    defense.name, pretrain.name, evaluate.protocol) is replaced, since the base's parameters
    belong to the other component."""
    profile = dict(profile)
    unset = profile.pop("unset", [])
    where = f"profiles.{name}.unset" if name else "unset"
    if not isinstance(unset, list) or not all(isinstance(u, str) for u in unset):
        raise ClipxUsageError(f"{where}: expected an array of dotted keys, got {unset!r}")
    trimmed = copy.deepcopy(base)
    for i, dotted in enumerate(unset):
        if not _delete(trimmed, dotted.split(".")):
            known = sorted(_dotted_keys(base))
            raise ClipxUsageError(
                f"{where}.{i}: '{dotted}' is not in the base recipe{closest(dotted, known)}"
            )
    out = deep_merge(trimmed, profile)
    for section, key in IDENTITY_KEYS.items():
        new, old = profile.get(section), base.get(section)
        if (
            isinstance(new, dict)
            and isinstance(old, dict)
            and new.get(key, old.get(key)) != old.get(key)
        ):
            out[section] = copy.deepcopy(new)
    return out


def _delete(node: Any, parts: list[str]) -> bool:
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    if isinstance(node, dict) and parts[-1] in node:
        del node[parts[-1]]
        return True
    return False


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = ((str(i), v) for i, v in enumerate(node))
    else:
        return [prefix]
    out = []
    for k, v in items:
        out += _dotted_keys(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def parse_set(item: str) -> tuple[list[str], Any]:
    """'a.b.0.c=value' -> (['a','b','0','c'], value parsed as TOML, else the raw string)."""
    if "=" not in item:
        raise ClipxUsageError(f"--set {item!r}: expected KEY=VALUE, e.g. defense.lr=1e-5")
    key, raw = item.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise ClipxUsageError(
            f"--set {item!r}: bad key {key!r}; write a dotted key like defense.lr"
        )
    try:
        value = tomllib.loads(f"v = {raw}", parse_float=_toml_float)["v"]
    except _Underflow as exc:
        raise ClipxUsageError(f"--set {key.strip()}: number {exc} {UNDERFLOW}") from None
    except tomllib.TOMLDecodeError:
        value = raw
    except RecursionError:
        raise ClipxUsageError(f"--set {key.strip()}: value nested too deeply") from None
    if nesting_depth(value) > MAX_NESTING:
        raise ClipxUsageError(f"--set {key.strip()}: value nested too deeply")
    return parts, value


def apply_set(doc: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set a dotted key; integer parts index arrays (baselines.0.lr); index == len appends."""
    node: Any = doc
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit():
                raise ClipxUsageError(f"--set {'.'.join(parts)}: '{where}' must be an array index")
            i = int(part)
            if i > len(node):
                raise ClipxUsageError(
                    f"--set {'.'.join(parts)}: index {i} out of range ({len(node)} entries)"
                )
            if i == len(node):
                node.append({})
            if last:
                node[i] = value
            else:
                node = node[i]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            prefix = ".".join(parts[:depth])
            raise ClipxUsageError(f"--set {'.'.join(parts)}: '{prefix}' is a value, not a table")


def _train_config_type():
    try:
        from .training.trainer import TrainConfig
    except ImportError:
        from .training.config import TrainConfig
    return TrainConfig


def _table(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ClipxUsageError(f"{key}: expected a table, got {value!r}")
    return value


def _require(section: dict[str, Any], key: str, prefix: str, what: str) -> None:
    """A missing required key; a misspelling of it is reported as the unknown key it is."""
    if key in section:
        return
    for k in section:
        if closest(k, [key]):
            raise ClipxUsageError(f"{prefix}.{k}: unknown key{closest(k, [key])}")
    raise ClipxUsageError(f"{prefix}.{key}: missing ({what})")


def _name(value: Any, key: str, kind: str, known: dict[str, Any]) -> str:
    if not isinstance(value, str):
        raise ClipxUsageError(f"{key}: expected a {kind} name (string), got {value!r}")
    if value not in known:
        err = unknown_name(kind, value, known)
        raise ClipxUsageError(f"{key}: {err}")
    try:  # a name two plugins share is known but ambiguous: `plugin:name` resolves it
        known[value]
    except ClipxUsageError as err:
        raise ClipxUsageError(f"{key}: {err}") from None
    return value


# --------------------------------------------------------------------------------------------
# validation and normalisation


class Registries:
    """Registry snapshots for one resolution (each registry is built once)."""

    def __init__(self) -> None:
        self._cache: dict[str, dict[str, Any]] = {}

    def __getitem__(self, kind: str) -> dict[str, Any]:
        if kind not in self._cache:
            self._cache[kind] = entries(kind)
        return self._cache[kind]


_Registries = Registries  # the short name the validators below use


def _templates(value: Any, key: str, reg: _Registries, descriptions: bool = False) -> Any:
    if isinstance(value, str) and "{}" not in value:
        return _name(value, key, "template set", reg["templates"])
    if isinstance(value, str):
        return [check_template(value, key)]
    if isinstance(value, list) and value and all(isinstance(t, str) and "{}" in t for t in value):
        return [check_template(t, f"{key}.{i}") for i, t in enumerate(value)]
    if (
        descriptions
        and isinstance(value, dict)
        and all(isinstance(v, list) and all(isinstance(t, str) for t in v) for v in value.values())
    ):
        return value
    raise ClipxUsageError(
        f"{key}: expected a template-set name or a list of strings containing '{{}}', got {value!r}"
    )


def model_section(section: Any, reg: Registries) -> dict[str, Any]:
    section = dict(_table(section, "model"))
    _require(section, "source", "model", "a model registry name, e.g. 'procedural-small'")
    source = _name(section.pop("source"), "model.source", "model", reg["models"])
    out: dict[str, Any] = {"source": source}
    checkpoint = section.pop("checkpoint", None)
    adapter = section.pop("adapter", None)  # an adapter folder (models/adapters.py) on top
    factory = reg["models"][source].obj
    out.update(_factory_kwargs(section, factory, "model", ("source", "checkpoint", "adapter")))
    check_device_params(out, "model")  # a model's own device: --model-arg, model.device
    if checkpoint is not None:
        out["checkpoint"] = coerce(checkpoint, str, "model.checkpoint")
    if adapter is not None:
        out["adapter"] = coerce(adapter, str, "model.adapter")
    return out


def _dataset(
    section: Any, key: str, reg: _Registries, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    section = dict(_table(section, key))
    _require(section, "dataset", key, "a dataset registry name")
    name = _name(section.pop("dataset"), f"{key}.dataset", "dataset", reg["datasets"])
    out: dict[str, Any] = {"dataset": name}
    factory = reg["datasets"][name].obj
    params, _ = _signature(factory)
    for k in extra:
        if k in section and k not in params:
            value = section.pop(k)
            dotted = f"{key}.{k}"
            if k == "templates":
                out[k] = _templates(value, dotted, reg)
            else:  # n: a seeded subset
                out[k] = coerce(value, int, dotted)
                if out[k] < 1:
                    raise ClipxUsageError(f"{dotted}: must be a positive integer, got {value!r}")
    from .data.splits import SUBSET_KEYS, check_subset_spec  # torch-free at call time only

    for k in SUBSET_KEYS:  # class split / held-out part: applied by clipx, not the factory
        if k in section and k not in params:
            out[k] = section.pop(k)
    check_subset_spec(out, key)
    out.update(_factory_kwargs(section, factory, key, ("dataset", *extra)))
    check_dataset_params(out, key)
    check_device_params(out, key)
    return out


def _check_method(method: dict[str, Any], key: str) -> None:
    """What `recipe run` checks before training, done at validation: the training options as a
    TrainConfig and iteration counts >= 0. (The defense itself is built by `recipe run` before
    any work; not here, since a profile may name files only its own machine has.)"""
    check_iterations(method["params"], key, minimum=0)
    if "seed" in method["train"]:
        check_seed(method["train"]["seed"], f"{key}.seed")
    try:
        _train_config_type().from_dict(dict(method["train"]))
    except ClipxUsageError as exc:
        raise ClipxUsageError(f"{key}: {exc}") from None


def _method(
    section: Any, key: str, reg: _Registries, seed: int, default_label: str | None = None
) -> dict[str, Any]:
    section = dict(_table(section, key))
    _require(section, "name", key, "a defense registry name")
    name = _name(section.pop("name"), f"{key}.name", "defense", reg["defenses"])
    label = check_label(section.pop("label", default_label or name), f"{key}.label")
    factory = reg["defenses"][name].obj
    params, var_kw = _signature(factory)
    cfg_fields = _dataclass_fields(_train_config_type())
    train = dict(_table(section.pop("train", {}), f"{key}.train"))
    explicit = dict(_table(section.pop("params", {}), f"{key}.params"))
    for k in train:
        if k not in cfg_fields:
            raise _unknown_key(f"{key}.train.{k}", list(cfg_fields))
    # routing: the defense's own parameters first (its `eps` is an attack budget, not Adam's),
    # then TrainConfig fields, then **kwargs of the factory
    for k, v in section.items():
        if k in params:
            explicit[k] = v
        elif k in cfg_fields:
            train[k] = v
        elif var_kw:
            explicit[k] = v
        else:
            raise _unknown_key(f"{key}.{k}", set(params) | set(cfg_fields) | set(METHOD_KEYS))
    train = {k: coerce(v, cfg_fields[k], f"{key}.{k}") for k, v in train.items()}
    train.setdefault("seed", seed)
    if "extras" in train:
        _table(train["extras"], f"{key}.extras")
    explicit = _factory_kwargs(explicit, factory, key, tuple(cfg_fields) + METHOD_KEYS)
    check_device_params(explicit, key)
    method = {"name": name, "label": label, "train": train, "params": explicit}
    _check_method(method, key)
    return method


def evaluate_section(section: Any, reg: Registries) -> dict[str, Any]:
    """[evaluate]: protocol preset name + overrides of Protocol fields or the preset's own
    parameters; the protocol is built here so bad values fail at `recipe show` time."""

    section = dict(_table(section, "evaluate"))
    _require(section, "protocol", "evaluate", "an evaluation protocol registry name")
    name = _name(
        section.pop("protocol"), "evaluate.protocol", "evaluation protocol", reg["evaluators"]
    )
    out: dict[str, Any] = {"protocol": name}
    params, _ = _signature(reg["evaluators"][name].obj)
    fields = _dataclass_fields(Protocol)
    fields.pop("name", None)
    for k, v in section.items():
        dotted = f"evaluate.{k}"
        if k == "datasets":
            out[k] = _eval_datasets(v, reg)
        elif k == "templates":
            out[k] = _templates(v, dotted, reg, descriptions=True)
        elif k == "attacks":
            out[k] = _eval_attacks(v, reg)
        elif k in params:
            out[k] = coerce(v, params[k], dotted)
        elif k in fields:
            out[k] = coerce(v, fields[k], dotted)
        else:
            raise _unknown_key(dotted, ["protocol", *params, *fields])
    check_iterations(out, "evaluate")
    if "seed" in out:
        check_seed(out["seed"], "evaluate.seed")
    try:
        protocol_from_dict(out)
    except ClipxUsageError as exc:
        raise ClipxUsageError(f"evaluate: {exc}") from None
    return out


def _eval_datasets(value: Any, reg: _Registries) -> list[Any]:
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ClipxUsageError(f"evaluate.datasets: expected a non-empty array, got {value!r}")
    out = []
    for i, item in enumerate(value):
        key = f"evaluate.datasets.{i}"
        if isinstance(item, str):
            out.append(_name(item, key, "dataset", reg["datasets"]))
        else:
            out.append(_dataset(item, key, reg, extra=("n", "templates")))
    return out


def _eval_attacks(value: Any, reg: _Registries) -> list[Any]:
    """Attack names, or {name, label?, params?, **params}; parameter names are checked against
    the attack's factory (budgets such as alpha may be 'eps/4' expressions: values pass as is)."""
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list):
        raise ClipxUsageError(f"evaluate.attacks: expected an array, got {value!r}")
    out: list[Any] = []
    for i, item in enumerate(value):
        key = f"evaluate.attacks.{i}"
        if isinstance(item, str):
            out.append(_name(item, key, "attack", reg["attacks"]))
            continue
        item = dict(_table(item, key))
        _require(item, "name", key, "an attack registry name")
        name = _name(item.pop("name"), f"{key}.name", "attack", reg["attacks"])
        spec: dict[str, Any] = {"name": name}
        if "label" in item:
            spec["label"] = coerce(item.pop("label"), str, f"{key}.label")
        given = dict(_table(item.pop("params", {}), f"{key}.params"))
        given.update(item)
        accepted, var_kw = _signature(reg["attacks"][name].obj)
        accepted.pop("model", None)
        accepted.update(_types_from_defaults(reg["attacks"][name].obj, accepted))
        for k, v in given.items():
            if k not in accepted and not var_kw and k != "eps":  # eps: the protocol explains
                raise _unknown_key(f"{key}.{k}", ["name", "label", "params", *accepted])
            if _is_eps_like(k) and isinstance(v, str):
                _budget_text(v, f"{key}.{k}")  # checked here, kept as written ('eps/4')
            elif k in accepted:
                coerce(v, accepted[k], f"{key}.{k}")  # checked, kept as written
        check_iterations(given, key)
        check_device_params(given, key)
        spec["params"] = given
        out.append(spec)
    return out


def validate(doc: dict[str, Any], reg: _Registries | None = None) -> dict[str, Any]:
    """Check a merged recipe (profiles already applied) and return its normalised form."""
    reg = reg or _Registries()
    for key in doc:
        if key not in SECTIONS:
            raise _unknown_key(key, SECTIONS)
    head = dict(_table(doc.get("recipe", {}), "recipe"))
    for key in head:
        if key not in RECIPE_KEYS:
            raise _unknown_key(f"recipe.{key}", RECIPE_KEYS)
    name = coerce(head.get("name", ""), str, "recipe.name")
    if not name or not _LABEL.match(name):
        raise ClipxUsageError(
            f"recipe.name: {name!r} must be a simple name (letters, digits, - _ .)"
        )
    check_name_length(name, "recipe.name")  # the default run dir is runs/<name>
    seed = check_seed(coerce(head.get("seed", 0), int, "recipe.seed"), "recipe.seed")
    device = check_device(coerce(head.get("device", "auto"), str, "recipe.device"), "recipe.device")
    out: dict[str, Any] = {
        "recipe": {
            "name": name,
            "description": coerce(head.get("description", ""), str, "recipe.description"),
            "seed": seed,
            "device": device,
        }
    }
    if "seeds" in head:  # one run per seed, then mean and spread (clip_robust_ext.seeds)
        out["recipe"]["seeds"] = _seed_list(head["seeds"])
    if "model" not in doc:
        raise ClipxUsageError("model: missing section [model] (the starting model)")
    out["model"] = model_section(doc["model"], reg)
    needs_training = any(k in doc for k in ("pretrain", "defense", "baselines"))
    if "data" in doc:
        out["data"] = _dataset(doc["data"], "data", reg, extra=("templates", "n"))
    elif needs_training:
        raise ClipxUsageError("data: missing section [data] (the training data)")
    if "pretrain" in doc:
        out["pretrain"] = _method(doc["pretrain"], "pretrain", reg, seed, "pretrain")
    if "defense" in doc:
        out["defense"] = _method(doc["defense"], "defense", reg, seed)
    if "baselines" in doc:
        if not isinstance(doc["baselines"], list):
            raise ClipxUsageError("baselines: expected an array of tables ([[baselines]])")
        out["baselines"] = [
            _method(b, f"baselines.{i}", reg, seed) for i, b in enumerate(doc["baselines"])
        ]
    labels = [m["label"] for m in _methods(out)]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ClipxUsageError(
            f"baselines: label '{dupes[0]}' is used twice; set label = \"...\" to tell them apart"
        )
    if "evaluate" in doc:
        out["evaluate"] = evaluate_section(doc["evaluate"], reg)
    present = {
        "pretrain": "pretrain" in out,
        "defend": bool(_methods(out, include_pretrain=False)),
        "evaluate": "evaluate" in out,
    }
    default = [s for s in STAGES if present[s]]
    if "stages" not in head and not default:
        raise ClipxUsageError(
            "recipe: nothing to do; add [defense], [[baselines]], [pretrain] or [evaluate]"
        )
    stages = head.get("stages", default)
    if not isinstance(stages, list) or not stages:
        raise ClipxUsageError(
            f"recipe.stages: expected a non-empty array of {list(STAGES)}, got {stages!r}"
        )
    for i, stage in enumerate(stages):
        if stage not in STAGES:
            raise ClipxUsageError(
                f"recipe.stages.{i}: unknown stage {stage!r}{closest(str(stage), STAGES)}; stages: {', '.join(STAGES)}"
            )
        needed = {"pretrain": "pretrain", "evaluate": "evaluate"}.get(stage)
        if needed and needed not in out:
            raise ClipxUsageError(f"recipe.stages: stage '{stage}' needs a [{needed}] section")
        if stage == "defend" and not _methods(out, include_pretrain=False):
            raise ClipxUsageError("recipe.stages: stage 'defend' needs [defense] or [[baselines]]")
    out["recipe"]["stages"] = sorted(set(stages), key=STAGES.index)
    return out


def _seed_list(value: Any) -> list[int]:
    if not isinstance(value, list) or not value:
        raise ClipxUsageError(
            f"recipe.seeds: expected a non-empty array of integers, got {value!r}"
        )
    seeds = [coerce(v, int, f"recipe.seeds.{i}") for i, v in enumerate(value)]
    if len(set(seeds)) != len(seeds):
        raise ClipxUsageError(f"recipe.seeds: a seed is listed twice in {seeds}")
    if any(not 0 <= s < 2**32 for s in seeds):
        raise ClipxUsageError(f"recipe.seeds: seeds must be in [0, 2**32), got {seeds}")
    return seeds


def _methods(doc: dict[str, Any], include_pretrain: bool = True) -> list[dict[str, Any]]:
    methods = [doc["pretrain"]] if include_pretrain and "pretrain" in doc else []
    if "defense" in doc:
        methods.append(doc["defense"])
    return methods + list(doc.get("baselines", []))


# --------------------------------------------------------------------------------------------
# the resolved recipe


@dataclass
class ResolvedRecipe:
    """A validated recipe: `doc` is JSON-safe and itself a valid recipe."""

    name: str
    profile: str
    source: str
    doc: dict[str, Any]
    overrides: list[str] = field(default_factory=list)

    @property
    def seed(self) -> int:
        return self.doc["recipe"]["seed"]

    @property
    def stages(self) -> list[str]:
        return self.doc["recipe"]["stages"]

    @property
    def methods(self) -> list[dict[str, Any]]:
        """[defense] then [[baselines]] (not pretrain), each {name, label, train, params}."""
        return _methods(self.doc, include_pretrain=False)

    @property
    def seeds(self) -> list[int] | None:
        """`[recipe] seeds`: run once per seed (None: one run with `seed`)."""
        return self.doc["recipe"].get("seeds")

    def for_seed(self, seed: int) -> ResolvedRecipe:
        """The single-seed recipe of one of `seeds`: the recipe seed and every method's training
        seed that followed it (a method's explicitly different seed is kept)."""
        doc = copy.deepcopy(self.doc)
        doc["recipe"].pop("seeds", None)
        base, doc["recipe"]["seed"] = doc["recipe"]["seed"], seed
        for method in _methods(doc):
            if method["train"].get("seed") == base:
                method["train"]["seed"] = seed
        return ResolvedRecipe(
            self.name, self.profile, self.source, doc, [*self.overrides, f"recipe.seed={seed}"]
        )

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.doc)

    def to_json(self) -> str:
        return json.dumps(self.doc, indent=2) + "\n"

    def to_toml(self) -> str:
        return dump_toml(self.doc)

    def fingerprint(self, *sections: str) -> str:
        """Hash of the whole recipe or of some sections (what a stored result depends on)."""
        part = {k: self.doc.get(k) for k in sections} if sections else self.doc
        text = json.dumps(part, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _error_in(exc: ClipxUsageError, doc: dict[str, Any]) -> bool:
    """Whether the dotted key an error message starts with exists in `doc` (a profile)."""
    key = str(exc).split(":", 1)[0]
    node: Any = doc
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def dump_toml(doc: dict[str, Any]) -> str:
    """TOML text of a JSON-like dict; TOML has no null, so keys whose value is None are left out
    (they mean "the default" in a recipe)."""
    return tomli_w.dumps(_without_none(doc))


def _without_none(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_none(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_without_none(v) for v in node]
    return node


def load_raw(name_or_path: str | Path) -> tuple[Path, dict[str, Any]]:
    path = find_recipe(name_or_path)
    return path, read_toml(path)


def resolve(
    name_or_path: str | Path,
    profile: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> ResolvedRecipe:
    """Load, apply profile and --set overrides, validate. Errors are ClipxUsageError."""
    path, raw = load_raw(name_or_path)
    try:
        return _resolve(path, raw, profile, list(overrides))
    except ClipxUsageError as exc:
        message = str(exc)
        if not message.startswith(str(path)):
            message = f"{path.name}: {message}"
        raise ClipxUsageError(message) from None


def _resolve(
    path: Path, raw: dict[str, Any], profile: str | None, overrides: list[str]
) -> ResolvedRecipe:
    profiles = _table(raw.get("profiles", {}), "profiles")
    base = {k: v for k, v in raw.items() if k != "profiles"}
    head = base.setdefault("recipe", {})
    if isinstance(head, dict):
        head.setdefault("name", path.stem)
        head.pop("profile", None)  # informational in resolved recipes
    reg = _Registries()
    validate(base, reg)  # the base is the default profile: it must stand on its own
    for pname, partial in profiles.items():
        _table(partial, f"profiles.{pname}")
        try:
            validate(merge_profile(base, partial, pname), reg)
        except ClipxUsageError as exc:
            if _error_in(exc, partial):
                raise ClipxUsageError(f"profiles.{pname}.{exc}") from None
            raise
    doc = base
    if profile not in (None, "", "default"):
        if profile not in profiles:
            raise unknown_name("profile", profile, ["default", *profiles])
        doc = merge_profile(base, profiles[profile], profile)
    for item in overrides:
        parts, value = parse_set(item)
        if parts[0] == "profiles":
            raise ClipxUsageError(f"--set {item}: select a profile with --profile instead")
        apply_set(doc, parts, value)
    try:
        out = validate(doc, reg)
    except ClipxUsageError as exc:
        raise ClipxUsageError(f"{exc}" + (" (after --set)" if overrides else "")) from None
    pname = profile if profile not in (None, "") else "default"
    out["recipe"]["profile"] = pname
    return ResolvedRecipe(out["recipe"]["name"], pname, str(path), out, overrides)


def list_recipes() -> list[dict[str, Any]]:
    """name, description, profiles, plugin, path of every registered recipe."""
    out = []
    for name, entry in entries("recipes").items():
        profiles: list[str] = []
        try:
            raw = read_toml(Path(entry.obj))
            profiles = (
                sorted(raw.get("profiles", {})) if isinstance(raw.get("profiles"), dict) else []
            )
        except ClipxUsageError:
            pass
        out.append(
            {
                "name": name,
                "description": entry.description,
                "profiles": ["default", *profiles],
                "plugin": entry.plugin,
                "path": str(entry.obj),
            }
        )
    return sorted(out, key=lambda d: d["name"])


def load_config(
    path: str | Path,
    profile: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    what: str = "config",
) -> dict[str, Any]:
    """A plugin's own TOML config with the recipe rules: `[profiles.<name>]` merged as recipes
    merge profiles (`unset`, a changed component replaces its section), then `--set key=value`
    overrides. Returns the plain dict (validation is the plugin's)."""
    doc = read_toml(Path(path))
    profiles = _table(doc.pop("profiles", {}), "profiles")
    if profile not in (None, "", "default"):
        if profile not in profiles:
            raise unknown_name(f"{what} profile", profile, ["default", *profiles])
        doc = merge_profile(doc, _table(profiles[profile], f"profiles.{profile}"), profile)
    for item in overrides:
        parts, value = parse_set(item)
        if parts[0] == "profiles":
            raise ClipxUsageError(f"--set {item}: select a profile with --profile instead")
        apply_set(doc, parts, value)
    return doc
