"""The paper's claim as a measurement: attack text x evaluation text (a 2x2 grid).

Attack text (rows, one attack each, both from the same PGD code so only the objective differs):
  'template' = PGD on CE with the single template (semantic-ensemble with descriptions='template',
               which equals torchattacks PGD on the template classifier);
  'ensemble' = the semantic-ensemble attack (mean CE over the K description classifiers).
Evaluation text (columns, the protocol's zero-shot head):
  'template' = the single template; 'ensemble' = the description set (each class = the mean
  embedding of all its descriptions, as in CuPL-style evaluation).
Each column is an ordinary Protocol run by the evaluation engine (`saft-template`,
`saft-ensemble`), so records, resuming, sharding and tables are the engine's. SAFT's finding:
template PGD barely hurts the ensemble head while the semantic-ensemble attack does, i.e.
cell (ensemble, ensemble) < cell (template, ensemble)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clip_robust_ext.api import ClipxUsageError, LoadedCLIP, Protocol

from .descriptions import DEFAULT_TEMPLATE, load_description_file

TEXTS = ("template", "ensemble")
ATTACK_LABELS = {"template": "pgd-template", "ensemble": "semantic-ensemble"}
PROTOCOL_NAMES = {"template": "saft-template", "ensemble": "saft-ensemble"}


def _eval_templates(descriptions: Any) -> Any:
    """The ensemble head's text: a registered description-set name, or the dict of a JSON file."""
    if descriptions in (None, "auto", "template"):
        raise ClipxUsageError(
            "saft-ensemble evaluates with a description set: set descriptions = '<set name or JSON path>'"
        )
    if isinstance(descriptions, str) and (
        descriptions.endswith(".json") or Path(descriptions).is_file()
    ):
        return load_description_file(descriptions)
    return descriptions


def _tecoa16() -> list[str]:
    from clip_robust_ext.api import TECOA_16

    return list(TECOA_16)


def saft_protocol(
    eval_text: str,
    descriptions: Any = "auto",
    k: int = 5,
    filter: str = "name-similarity",
    steps: int = 100,
    alpha: str | float = "1/255",
    template: str = DEFAULT_TEMPLATE,
    **overrides: Any,
) -> Protocol:
    """One column of the grid: both attacks, scored with the template or the descriptions."""
    if eval_text not in TEXTS:
        raise ClipxUsageError(f"eval_text must be one of {TEXTS}, got {eval_text!r}")
    if isinstance(descriptions, (bool, int, float, list, tuple)):  # checked at recipe time
        raise ClipxUsageError(
            f"descriptions: expected a description-set name, a JSON file or a table of class -> "
            f"descriptions, got {descriptions!r}"
        )
    common = {"steps": steps, "alpha": alpha, "template": template, "random_start": True}
    attacks = [
        {
            "name": "semantic-ensemble",
            "label": ATTACK_LABELS["template"],
            "params": {**common, "descriptions": "template"},
        },
        {
            "name": "semantic-ensemble",
            "label": ATTACK_LABELS["ensemble"],
            "params": {**common, "descriptions": descriptions, "k": k, "filter": filter},
        },
    ]
    templates = [template] if eval_text == "template" else _eval_templates(descriptions)
    return Protocol(
        name=PROTOCOL_NAMES[eval_text],
        attacks=attacks,
        eps=["1/255"],
        templates=templates,
        datasets=_tecoa16(),
        description=f"SAFT grid column '{eval_text}': PGD-{steps} with the template and the "
        f"semantic-ensemble attack (K={k}, {filter}), scored with the {eval_text} text",
    ).with_overrides(**overrides)


def saft_template(
    descriptions: Any = "auto",
    k: int = 5,
    filter: str = "name-similarity",
    steps: int = 100,
    alpha: str | float = "1/255",
    template: str = DEFAULT_TEMPLATE,
    **overrides: Any,
) -> Protocol:
    """Evaluated with the single template (SAFT's default evaluation)."""
    return saft_protocol("template", descriptions, k, filter, steps, alpha, template, **overrides)


def saft_ensemble(
    descriptions: Any = None,
    k: int = 5,
    filter: str = "name-similarity",
    steps: int = 100,
    alpha: str | float = "1/255",
    template: str = DEFAULT_TEMPLATE,
    **overrides: Any,
) -> Protocol:
    """Evaluated with the description ensemble (SAFT's `--text semantic_ensemble`)."""
    return saft_protocol("ensemble", descriptions, k, filter, steps, alpha, template, **overrides)


def evaluate_grid(
    loaded: LoadedCLIP,
    run_dir: str | Path,
    label: str = "model",
    descriptions: Any = None,
    **settings: Any,
) -> list[dict[str, Any]]:
    """Run both columns with the evaluation engine; returns its records (both protocols).

    settings: k, filter, steps, alpha, template and any Protocol field (datasets, eps, n_samples,
    seed, batch_size ...). Results are resumable files under run_dir/eval like any evaluation."""
    from clip_robust_ext.api import evaluate

    records = []
    for text in TEXTS:
        protocol = saft_protocol(text, descriptions, **settings)
        records += evaluate(loaded, protocol, run_dir, label, progress=False)
    return records


def grid_cells(records: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """{(label, dataset_key, eps): {'clean': {eval: acc}, 'robust': {attack: {eval: acc}}, 'n': {..}}}."""
    by_name = {v: k for k, v in PROTOCOL_NAMES.items()}
    out: dict[tuple, dict[str, Any]] = {}
    for rec in records:
        text = by_name.get(rec.get("protocol"))
        if text is None:
            continue
        key = (
            rec.get("label", "model"),
            rec.get("dataset_key", rec.get("dataset")),
            rec.get("eps_str"),
        )
        cell = out.setdefault(key, {"clean": {}, "robust": {a: {} for a in TEXTS}, "n": {}})
        cell["clean"][text] = rec["clean_acc"]
        cell["n"][text] = rec["n"]
        for a in TEXTS:
            cell["robust"][a][text] = rec["per_attack"].get(ATTACK_LABELS[a])
    return out


def grid_markdown(records: list[dict[str, Any]]) -> str:
    """One 2x2 table (rows: attack text, columns: evaluation text) per model, dataset and eps."""
    blocks = []
    for (label, dataset, eps), cell in sorted(
        grid_cells(records).items(), key=lambda kv: tuple(map(str, kv[0]))
    ):
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        lines = [
            f"**{label}** on {dataset}, eps {eps}, n={cell['n'].get('template', cell['n'].get('ensemble'))} "
            "(accuracy %)",
            "",
            "| attack text \\ eval text | template | ensemble |",
            "| --- | --- | --- |",
            f"| none (clean) | {fmt(cell['clean'].get('template'))} | {fmt(cell['clean'].get('ensemble'))} |",
        ]
        for a in TEXTS:
            row = cell["robust"][a]
            lines.append(f"| {a} | {fmt(row.get('template'))} | {fmt(row.get('ensemble'))} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
