"""The single-model evaluation path (`clipx eval`): command-line options -> a [model] table and a
validated [evaluate] table, then one model evaluated into a run dir under the lock."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import open_clip

from ..errors import ClipxUsageError, unknown_name
from ..evaluation import distributed as D
from ..evaluation import load_records, protocol_from_dict
from ..evaluation.merge import merge_shards
from ..evaluation.shards import evaluate_shard, parse_shard, shard_dir
from ..models.hub import has_schema
from ..params import signature_of
from ..params.values import check_device, check_label
from ..recipes import Registries, apply_set, evaluate_section, model_section, parse_set
from ..registry import entries, provenance
from ..utils.devices import resolve_device
from ..utils.log import log
from .builders import build_model
from .lock import RunLock, check_writable
from .records import RunResult, evaluate_loaded, note_components, write_results


def _kv(items: tuple[str, ...] | list[str], what: str) -> dict[str, Any]:

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
    adapter: str | None = None,
) -> tuple[dict[str, Any], str]:
    """--model & co -> a [model] table and a default label."""

    models = entries("models")
    extra = _kv(model_args, "--model-arg")
    if model in models:
        spec: dict[str, Any] = {"source": model, **extra}

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
    if adapter is not None:
        spec["adapter"] = adapter
        label = f"{label}+{_file_label(Path(str(adapter).split(':', 1)[-1]))}"
    return spec, label


def _file_label(path: Path) -> str:
    """The default label of a weights file: its name (its folder's for final.pt/checkpoint.pt)
    plus a short hash of its absolute path, so two files that share a name never share results."""

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
    adapter: str | None = None,
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

    reg = Registries()
    raw_spec, default_label = eval_model_spec(
        model, arch, pretrained, checkpoint, model_args, adapter
    )
    spec = model_section(raw_spec, reg)
    section, proto = eval_protocol(
        protocol, attacks, eps, datasets, n_samples, templates, seed, overrides, reg, testtime
    )

    label = eval_label(label, default_label)
    check_device(device, "--device")
    run_dir = Path(run_dir) if run_dir else Path("runs") / f"eval-{label}"
    request = {"label": label, "model": spec, "evaluate": section}
    part = parse_shard(shard) if shard else None
    where = shard_dir(run_dir, *part) if part else run_dir
    D.maybe_init()  # torchrun, srun, accelerate: rank 0 holds the lock and writes
    with D.held_by_main(RunLock(where, resume=True, what="evaluation")):
        D.on_main(lambda: check_writable(where))
        loaded = build_model(spec, resolve_device(device), seed=0)
        if part:
            return eval_shard(loaded, proto, run_dir, label, part, request)
        components = {label: {"model": provenance("models", spec["source"])}}
        D.on_main(lambda: note_components(run_dir, components))
        D.on_main(lambda: log(f"{label}: evaluating under protocol '{proto.name}' into {run_dir}"))
        records = evaluate_loaded(loaded, proto, run_dir, label, spec=spec)
        table = D.on_main(lambda: write_results(run_dir, load_records(run_dir)))
    return RunResult(run_dir, records, table, request, kind="request")


def eval_shard(loaded, proto, run_dir: Path, label: str, part, request) -> RunResult:
    """One array-job shard of `clipx eval` (evaluation/shards.py); merged by eval_merge."""
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
    run_dir = Path(run_dir)
    with RunLock(run_dir, resume=True, what="merge"):
        check_writable(run_dir)
        records, request = merge_shards(run_dir)
        note_components(run_dir, request.get("components", {}))
        table = write_results(run_dir, load_records(run_dir))
    return RunResult(run_dir, records, table, request, kind="request")


def eval_label(label: str | None, default: str, option: str = "--label") -> str:
    """The given label, or `default` made file-name safe (model names become run-dir names)."""

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
