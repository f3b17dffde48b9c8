"""`clipx saft ...`: the attack-text x evaluation-text grid for a recipe run, and description sets.

A recipe evaluates with one protocol (one column of the grid); `clipx saft grid RUN_DIR` runs
the other column for every model of the run with the same settings (the engine reuses what is
already computed) and prints / writes the 2x2 tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from clip_robust_ext.api import ClipxUsageError, fit_markdown


def run_models(run_dir: Path) -> tuple[dict[str, Any], list[tuple[str, Path | None]]]:
    """(resolved recipe, [(label, checkpoint or None for the start model)]) of a recipe run."""
    from clip_robust_ext.api import finished_models, read_json

    doc = read_json(run_dir / "recipe.resolved.json")
    if doc is None:
        raise ClipxUsageError(f"{run_dir} is not a recipe run directory (no recipe.resolved.json)")
    return doc, finished_models(run_dir, doc)


def grid_for_run(run_dir: str | Path, device: str = "auto") -> str:
    """Both grid columns for every model of a recipe whose [evaluate] uses a saft-* protocol."""
    from clip_robust_ext.api import RunLock

    run_dir = Path(run_dir)
    with RunLock(run_dir, resume=True, what="saft grid"):  # not while the recipe still runs
        return _grid(run_dir, device)


def _grid(run_dir: Path, device: str) -> str:
    from clip_robust_ext.api import atomic_write_text, build_model, load_weights, resolve_device

    from .protocol import PROTOCOL_NAMES, evaluate_grid, grid_markdown

    doc, models = run_models(run_dir)
    ev = dict(doc.get("evaluate") or {})
    if ev.get("protocol") not in PROTOCOL_NAMES.values():
        raise ClipxUsageError(
            f"{run_dir}: the recipe evaluates with '{ev.get('protocol')}'; the grid needs "
            f"protocol = {' or '.join(repr(p) for p in PROTOCOL_NAMES.values())}"
        )
    ev.pop("protocol")
    ev.pop("templates", None)  # each column sets its own evaluation text
    dev = resolve_device(
        device if device != "auto" else doc.get("recipe", {}).get("device", "auto")
    )
    seed = doc.get("recipe", {}).get("seed", 0)
    records = []
    for label, ckpt in models:
        loaded = build_model(doc["model"], dev, seed=seed)
        if ckpt is not None:
            load_weights(loaded, ckpt)
        click.echo(f"clipx: {label}: attack-text x evaluation-text grid", err=True)
        records += evaluate_grid(loaded, run_dir, label, **ev)
    table = grid_markdown(records)
    atomic_write_text(run_dir / "saft_grid.md", table + "\n")
    return table


def register(cli: click.Group) -> None:
    @cli.group("saft", context_settings={"help_option_names": ["-h", "--help"]})
    def saft() -> None:
        """SAFT: description sets and the attack-text x evaluation-text grid."""

    @saft.command("grid")
    @click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
    @click.option("--device", default="auto", help="auto, cpu, cuda, cuda:N.")
    def grid(run_dir: str, device: str) -> None:
        """2x2 grid (attack text x evaluation text) for every model of a recipe run.

        Rows: PGD with the single template / the semantic-ensemble attack; columns: accuracy
        with the template / with the description ensemble. For a recipe run the missing column
        is computed; for a `clipx eval` run dir the tables are built from its saft-* results.
        Writes RUN_DIR/saft_grid.md."""
        if (Path(run_dir) / "recipe.resolved.json").is_file():
            click.echo(fit_markdown(grid_for_run(run_dir, device)))
            return
        from clip_robust_ext.api import atomic_write_text, load_records

        from .protocol import PROTOCOL_NAMES, grid_markdown

        records = [r for r in load_records(run_dir) if r.get("protocol") in PROTOCOL_NAMES.values()]
        if not records:
            raise ClipxUsageError(f"{run_dir}: no saft-template / saft-ensemble results found")
        table = grid_markdown(records)
        atomic_write_text(Path(run_dir) / "saft_grid.md", table + "\n")
        click.echo(fit_markdown(table))

    @saft.command("descriptions")
    @click.argument("name", required=False)
    def descriptions(name: str | None) -> None:
        """List description sets, or print one (a registered name or a CuPL-style JSON path)."""
        from clip_robust_ext.api import entries

        from .descriptions import resolve_source

        if name is None:
            for set_name, entry in entries("templates").items():
                if isinstance(entry.obj, dict):
                    counts = [len(v) for v in entry.obj.values()]
                    click.echo(
                        f"{set_name}\t{len(counts)} classes, {min(counts)}-{max(counts)} per class\t"
                        f"{entry.description}"
                    )
            return
        label, data = resolve_source(name)
        click.echo(json.dumps({"set": label, "classes": data}, indent=1))


__all__ = ["grid_for_run", "register", "run_models"]
