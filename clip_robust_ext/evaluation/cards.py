"""Result cards: one JSON (+ markdown) per evaluated model, comparable across runs and machines.

A card says which model (zoo name / hub id, checkpoint sha256, architecture), under exactly what
(a protocol hash over datasets, split, class subset, the sample indices themselves, templates,
eps, attacks with their parameters and the seed), what came out (per dataset and averaged), what
it cost (wall and CPU seconds, image-tower forward / backward passes per sample, counted by hooks
on the model while it ran) and whether the attacks look strong enough (evaluation/strength.py).
`clipx leaderboard` ranks cards that share a protocol hash.

Layout: <run_dir>/cards/<label>.<protocol>.json and .md
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..utils.io import atomic_write_json, atomic_write_text
from ..utils.provenance import provenance_stamp
from ..utils.versions import versions
from . import distributed as D
from . import records as R
from .certified_card import add_certified, certified_markdown
from .protocols import Protocol, dataset_key
from .provenance import merged_components, read_components, record_components
from .strength import enforce, run_checks

CARD_SCHEMA = "clipx.card.v1"


def _sha256(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# -- cost: counted around the model, not estimated ------------------------------------------------
class CostMeter:
    """Wall and CPU seconds of a block, and how many images the image tower ran forward and
    backward (a forward hook counts the batch; a tensor hook on its output counts the gradient
    flowing back), plus text-tower sequences. CPU seconds cover every thread of the process."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.image_forward = self.image_backward = self.text_forward = 0
        self.wall_s = self.cpu_s = 0.0
        self._handles: list[Any] = []

    def _on_image(self, module: Any, args: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            output = output[0] if isinstance(output, (tuple, list)) else None
        if output is None:
            return
        n = int(output.shape[0])
        self.image_forward += n
        if output.requires_grad:
            output.register_hook(self._on_grad)

    def _on_grad(self, grad: torch.Tensor) -> None:
        self.image_backward += int(grad.shape[0])

    def _on_text(self, module: Any, args: Any, output: Any) -> None:
        self.text_forward += int(args[0].shape[0]) if args and hasattr(args[0], "shape") else 0

    def __enter__(self) -> CostMeter:
        visual = getattr(self.model, "visual", None)
        if isinstance(visual, torch.nn.Module):
            self._handles.append(visual.register_forward_hook(self._on_image))
        text = getattr(self.model, "transformer", None)
        if isinstance(text, torch.nn.Module) and text is not visual:
            self._handles.append(text.register_forward_hook(self._on_text))
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall_s = time.perf_counter() - self._wall0
        self.cpu_s = time.process_time() - self._cpu0
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def summary(self, n_samples: int, device: str) -> dict[str, Any]:
        per = (lambda v: round(v / n_samples, 3)) if n_samples else (lambda v: None)
        return {
            "wall_s": round(self.wall_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "device": device,
            "samples": n_samples,
            "image_forward": self.image_forward,
            "image_backward": self.image_backward,
            "text_forward": self.text_forward,
            "forward_per_sample": per(self.image_forward),
            "backward_per_sample": per(self.image_backward),
            "measured": "hooks on the image tower (forward outputs, their gradients) and the "
            "text transformer, during this evaluation only (datasets reused from earlier results "
            "cost nothing here)",
        }


# -- model identity -------------------------------------------------------------------------------
def weights_sha256(model: torch.nn.Module) -> str:
    """Full sha256 of the state dict (names, shapes, dtypes, values): the identity of weights
    that have no file of their own (a recipe's start model built from a seed)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update((t.float() if t.dtype == torch.bfloat16 else t).cpu().contiguous().numpy())
    return h.hexdigest()


def model_identity(
    loaded: Any, label: str, spec: dict[str, Any] | None, checkpoint: str | os.PathLike | None
) -> dict[str, Any]:
    """Label, source spec, zoo name / hub id when the model came from one, architecture, and
    the sha256 of the checkpoint file (or of the weights when there is no file)."""
    spec = dict(spec or {})
    names = [str(v) for v in (spec.get("arch"), spec.get("pretrained"), spec.get("source")) if v]
    zoo = next((n[4:] for n in names if n.startswith("zoo:")), None)
    hub = next((n[7:] for n in names if n.startswith("hf-hub:")), None)
    files = [checkpoint, spec.get("checkpoint"), spec.get("pretrained")]
    path = next((Path(f) for f in files if f and Path(str(f)).expanduser().is_file()), None)
    full = weights_sha256(loaded.model)
    return {
        "label": label,
        "source": spec,
        "zoo": zoo,
        "hub": hub,
        "arch": getattr(loaded, "arch", None),
        "pretrained": getattr(loaded, "pretrained", None),
        "checkpoint": str(path) if path else None,
        "checkpoint_sha256": _file_sha256(path) if path else None,
        "weights_sha256": full,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        # how it was trained: scope, trainable parameters, base fingerprint (training/scope.py)
        "scope": (getattr(loaded, "info", None) or {}).get("scope"),
        "certified": bool(spec.get("certified", False)),
    }


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- the protocol hash ------------------------------------------------------------------------------
def protocol_content(
    protocol: Protocol, run_dir: str | os.PathLike, label: str, records: list[dict[str, Any]]
) -> dict[str, Any]:
    """Everything a number on the card depends on besides the model: per dataset its name,
    split, factory options, the class names it was scored over, the sha256 of the exact sample
    index list, templates and attacked resolution; then eps, norm, attacks with their
    parameters, seed and the worst-case rule. Batch size, workers and wording are left out."""
    by_key = {r.get("dataset_key"): r for r in records}
    datasets = []
    for spec in protocol.datasets:
        key = dataset_key(spec)
        rec = by_key.get(key, {})
        result = R.read_json(R.result_path(run_dir, label, protocol.name, key)) or {}
        indices = (result.get("samples") or {}).get("indices")
        datasets.append(
            {
                "key": key,
                "dataset": spec["dataset"],
                "split": spec.get("split", "test"),
                "options": {
                    k: v
                    for k, v in spec.items()
                    if k not in ("dataset", "split", "n", "root", "path", "download")
                },
                "classes": rec.get("class_split"),
                "n": len(indices) if indices is not None else None,
                "indices_sha256": _sha256(indices) if indices is not None else None,
                "templates": protocol.templates_for(spec),
                "attack_resolution": rec.get("attack_resolution"),
            }
        )
    settings = getattr(protocol, "hash_settings", None)  # e.g. certify: sigma, draws, alpha
    return {
        **({"settings": settings()} if settings else {}),
        "datasets": datasets,
        "eps": [round(e, 10) for e in protocol.eps],
        "norm": protocol.norm,
        "attacks": protocol.attacks,
        "backend": protocol.backend,
        "seed": protocol.seed,
        "precision": protocol.precision,
        "cascade": protocol.cascade,
    }


def protocol_hash(content: dict[str, Any]) -> str:
    return _sha256(content)[:16]


# -- results --------------------------------------------------------------------------------------
def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def results_of(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (dataset, eps) clean / robust / per-attack accuracy and their mean over datasets."""
    rows = [
        {
            "dataset": r.get("dataset_key"),
            "eps": r.get("eps"),
            "eps_str": r.get("eps_str"),
            "n": r.get("n"),
            "clean": r.get("clean_acc"),
            "robust": r.get("robust_acc"),
            "per_attack": dict(r.get("per_attack") or {}),
            # randomness found by the engine's probe and how it was handled (randomness.py)
            **({"pipeline": r["pipeline"]} if "pipeline" in r else {}),
        }
        for r in records
    ]
    average = []
    for eps_str in dict.fromkeys(r["eps_str"] for r in rows):
        at = [r for r in rows if r["eps_str"] == eps_str]
        attacks = list(dict.fromkeys(a for r in at for a in r["per_attack"]))
        average.append(
            {
                "eps": at[0]["eps"],
                "eps_str": eps_str,
                "datasets": len(at),
                "clean": _mean([r["clean"] for r in at]),
                "robust": _mean([r["robust"] for r in at]),
                "per_attack": {a: _mean([r["per_attack"].get(a) for r in at]) for a in attacks},
            }
        )
    return {"per_dataset": rows, "average": average}


# -- writing --------------------------------------------------------------------------------------
def card_paths(run_dir: str | os.PathLike, label: str, protocol: str) -> tuple[Path, Path]:
    stem = f"{R.safe_name(label)}.{R.safe_name(protocol)}"
    folder = Path(run_dir) / "cards"
    return folder / f"{stem}.json", folder / f"{stem}.md"


def build_card(
    *,
    protocol: Protocol,
    run_dir: str | os.PathLike,
    label: str,
    records: list[dict[str, Any]],
    cost: dict[str, Any],
    checks: dict[str, Any],
    identity: dict[str, Any],
) -> dict[str, Any]:
    content = protocol_content(protocol, run_dir, label, records)
    card = {
        "schema": CARD_SCHEMA,
        "label": label,
        "model": identity,
        "protocol": {
            "name": protocol.name,
            "hash": protocol_hash(content),
            "content": content,
            "lineage": protocol.lineage,
            "description": protocol.description,
        },
        "results": results_of([r for r in records if r.get("kind") != "certified"]),
        # per-sample outcomes behind the numbers (clipx compare reads them), relative to the run dir
        "outcomes": {
            "samples": "samples.npz",
            "results": f"eval/{R.safe_name(label)}/{R.safe_name(protocol.name)}/",
        },
        "components": card_components(run_dir, records),
        "cost": cost,
        "checks": checks,
        "versions": versions(),
        "provenance": provenance_stamp(cost.get("cpu_s"), cost.get("wall_s")),
        "created_at": R.now(),
        "formulas": R.FORMULAS,
    }
    return add_certified(card, records)


def card_components(run_dir: str | os.PathLike, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Every component behind the card's records, with its plugin and distribution version."""
    by_label = read_components(run_dir)
    return merged_components([record_components(by_label, r) for r in records])


def write_card(card: dict[str, Any], run_dir: str | os.PathLike) -> Path:
    path, md = card_paths(run_dir, card["label"], card["protocol"]["name"])
    atomic_write_json(path, card)
    atomic_write_text(md, card_markdown(card))
    return path


def read_card(path: str | os.PathLike) -> dict[str, Any] | None:
    data = R.read_json(Path(path))
    return data if data and data.get("schema") == CARD_SCHEMA else None


def _fmt(v: Any) -> str:
    return "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))


def _provenance_lines(prov: dict[str, Any] | None) -> list[str]:
    if not prov:
        return []
    commit = (prov.get("commit") or "unknown")[:10] + (" (dirty tree)" if prov.get("dirty") else "")
    start = prov.get("start_model") or {}
    same = {True: "the published one", False: "NOT the published one", None: "no published one"}
    machine = prov.get("machine", {})
    return [
        f"- code: commit `{commit}`; machine {machine.get('cpu_model')}, "
        f"{machine.get('torch_threads')} torch thread(s)",
        f"- start model: `{start.get('source')}` weights sha256 "
        f"`{(start.get('weights_sha256') or '-')[:16]}...` "
        f"({same[start.get('matches_reference')]})"
        if start
        else "- start model: not recorded (evaluated outside a recipe)",
    ]


def _scope_line(scope: dict[str, Any] | None) -> list[str]:
    if not scope:
        return []
    return [
        f"- scope `{scope.get('scope')}` on {', '.join(scope.get('towers') or []) or '-'}: "
        f"{scope.get('trainable_params') or '-'} trainable parameters, base weights "
        f"fingerprint `{scope.get('base_fingerprint') or '-'}`"
    ]


def card_markdown(card: dict[str, Any]) -> str:
    """The card as a human-readable page (the JSON is the record)."""
    m, p, c = card["model"], card["protocol"], card["cost"]
    name = m.get("zoo") or m.get("hub") or m["label"]
    lines = [
        f"# Result card: {name}",
        "",
        f"- model: label `{m['label']}`, arch `{m.get('arch')}`, source `{json.dumps(m.get('source'))}`",
        f"- checkpoint sha256: `{m.get('checkpoint_sha256') or '-'}`; weights sha256 `{m['weights_sha256'][:16]}...`",
        *_scope_line(m.get("scope")),
        f"- protocol `{p['name']}`, hash `{p['hash']}`; eps {p['content']['eps']} ({p['content']['norm']}), "
        f"seed {p['content']['seed']}",
        "- attacks: "
        + ", ".join(
            f"{a['label']} ({a['name']} {json.dumps(a['params'])})" for a in p["content"]["attacks"]
        ),
        f"- cost: {c.get('wall_s')} s wall, {c.get('cpu_s')} s CPU on {c.get('device')}; "
        f"{c.get('forward_per_sample')} forward / {c.get('backward_per_sample')} backward "
        "image-tower passes per sample",
        *_provenance_lines(card.get("provenance")),
        "",
        "| dataset | n | sample indices sha256 | classes |",
        "|---|---|---|---|",
    ]
    for d in p["content"]["datasets"]:
        classes = d.get("classes") or "all"
        if isinstance(classes, dict):
            classes = f"{classes.get('classes')}: {', '.join(classes.get('class_names') or [])}"
        lines.append(
            f"| {d['key']} | {d['n']} | `{(d.get('indices_sha256') or '-')[:16]}` | {classes} |"
        )
    attacks = list(
        dict.fromkeys(a for r in card["results"]["per_dataset"] for a in r["per_attack"])
    )
    lines += ["", "| dataset | eps | clean | robust | " + " | ".join(attacks) + " |"]
    lines.append("|---" * (4 + len(attacks)) + "|")
    rows = card["results"]["per_dataset"] + [
        {**a, "dataset": "**average**"} for a in card["results"]["average"]
    ]
    for r in rows:
        cells = [r["dataset"], r.get("eps_str") or "-", _fmt(r["clean"]), _fmt(r["robust"])]
        cells += [_fmt(r["per_attack"].get(a)) for a in attacks]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += ["", f"## Attack-strength checks ({card['checks'].get('level', 'off')})", ""]
    for ch in card["checks"].get("results", []):
        mark = {"pass": "pass", "fail": "**FAIL**", "skipped": "skipped"}[ch["status"]]
        lines.append(f"- {ch['name']}: {mark} - {ch['detail']}")
    lines += certified_markdown(card)
    return "\n".join(lines) + "\n"


def evaluate_with_card(
    loaded: Any,
    protocol: Protocol,
    run_dir: str | os.PathLike,
    label: str,
    run: Callable[[], list[dict[str, Any]]],
    *,
    spec: dict[str, Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run `run()` (the evaluation) under a CostMeter, then the strength checks, then write the
    card. A strict protocol raises after the card is written, so the failure is on record."""

    with CostMeter(loaded.model) as meter:
        records = run()
    n = sum(int(r.get("n") or 0) for r in {r.get("dataset_key"): r for r in records}.values())
    device = str(next(loaded.model.parameters()).device)
    cost = meter.summary(n, device)
    old = read_card(card_paths(run_dir, label, protocol.name)[0])
    identity = model_identity(loaded, label, spec, checkpoint)
    checks = run_checks(loaded, protocol, records, identity)
    card = build_card(
        protocol=protocol,
        run_dir=run_dir,
        label=label,
        records=records,
        cost=cost,
        checks=checks,
        identity=identity,
    )
    if (
        meter.image_forward == 0
        and old
        and old["protocol"]["hash"] == card["protocol"]["hash"]
        and old["model"]["weights_sha256"] == card["model"]["weights_sha256"]
    ):
        card["cost"] = {**old["cost"], "reused_from": old["created_at"]}  # nothing ran this time

    if D.world()[0] == 0:
        write_card(card, run_dir)
    enforce(card)
    return records, card


__all__ = [
    "CARD_SCHEMA",
    "CostMeter",
    "build_card",
    "card_markdown",
    "card_paths",
    "evaluate_with_card",
    "model_identity",
    "protocol_content",
    "protocol_hash",
    "read_card",
    "results_of",
    "weights_sha256",
    "write_card",
]
