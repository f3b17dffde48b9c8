"""Run-directory records: results.json / .md / .csv, the components behind each model
(components.json) and the models a recipe run has finished (layout: run/layout.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluation import evaluate, markdown_table, write_reports
from ..evaluation.cards import evaluate_with_card
from ..evaluation.outcomes import export_run
from ..evaluation.provenance import read_components, record_components
from ..registry import provenance
from ..utils.io import atomic_write_json
from ..utils.provenance import write_run_provenance
from .layout import COMPONENTS_NAME, START_LABEL


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


def recipe_components(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """label -> the model source and defenses (with their plugins) behind each model of a recipe."""

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
    return read_components(run_dir)


def with_components(run_dir: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each record with `components`: every component behind it (model source, defenses,
    protocol, dataset, attacks) with the plugin and distribution that supplied it."""
    by_label = _read_components(run_dir)
    return [{**rec, "components": record_components(by_label, rec)} for rec in records]


def write_results(run_dir: Path, records: list[dict[str, Any]]) -> str:
    """results.json (every record, with the plugins behind it), results.md / results.csv
    (tables); returns the markdown."""

    atomic_write_json(run_dir / "results.json", with_components(run_dir, records))
    write_reports(run_dir, records)
    export_run(run_dir)  # samples.npz: the per-sample outcomes clipx compare reads
    write_run_provenance(run_dir, records)
    return markdown_table(records)
