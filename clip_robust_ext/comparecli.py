"""`clipx compare A B` and `clipx samples RUN_DIR`: thin commands over evaluation/pairing.py,
evaluation/paired.py and evaluation/outcomes.py (numpy / scipy load when a command runs)."""

from __future__ import annotations

import json

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command("compare", context_settings=CONTEXT)
@click.argument("models", nargs=-1, required=True, metavar="A [B]")
@click.option("--view", default=None, help="Dataset view, e.g. unseen (default: unseen classes).")
@click.option(
    "--eps", default=None, help="Budget as in the tables, e.g. 1/255 (default: smallest)."
)
@click.option(
    "--metric", default="robust", show_default=True, help="clean, robust or an attack label."
)
@click.option(
    "--all", "reference", default=None, metavar="REF", help="Every model of run A against REF."
)
@click.option("--sentence", is_flag=True, help="Also word each result (beats / loses to / ...).")
@click.option("--resamples", default=10_000, show_default=True, type=click.IntRange(100))
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def compare_command(
    models: tuple[str, ...],
    view: str | None,
    eps: str | None,
    metric: str,
    reference: str | None,
    sentence: bool,
    resamples: int,
    as_json: bool,
) -> None:
    """Paired difference A - B in points with a 95% hierarchical bootstrap interval (seeds, then
    the same test images for both) and an exact McNemar p-value. A and B are PATH[:LABEL]: a run
    dir, seed folder, result card or samples.npz, and the model's label when PATH holds several.
    With --all REF, A is a run and every other model in it is compared with REF (Holm-corrected)."""
    from .errors import ClipxUsageError
    from .evaluation import paired
    from .evaluation.pairing import compare_all, compare_models

    opts = {"view": view, "eps": eps, "metric": metric, "resamples": resamples}
    if reference is not None:
        if len(models) != 1:
            raise ClipxUsageError("--all REF takes one run: clipx compare RUN --all REF")
        found = compare_all(models[0], reference, **opts)
    elif len(models) == 2:
        found = [compare_models(models[0], models[1], **opts)]
    else:
        raise ClipxUsageError(f"compare takes two models A B, got {len(models)}")
    if as_json:
        doc = [c.to_dict() | {"verdict": paired.verdict(c)} for c in found]
        click.echo(json.dumps(doc if reference else doc[0], indent=2))
        return
    for c in found:
        click.echo(paired.line(c))
        if sentence:
            click.echo("  " + paired.sentence(c))


@click.command("samples", context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def samples_command(run_dir: str) -> None:
    """Write RUN_DIR/samples.npz, the per-sample outcomes of every model, seed and view of a run,
    and for a multi-seed run its summary with 95% intervals (runs do this themselves; this is
    for runs made before)."""
    from pathlib import Path

    from .errors import ClipxUsageError
    from .evaluation.outcomes import SAMPLES_FILE, export_run, read_samples
    from .evaluation.spread import write_seed_summary

    results = Path(run_dir) / "results.json"
    records = json.loads(results.read_text()) if results.is_file() else []
    if records and all("run_seed" in r for r in records):
        write_seed_summary(run_dir, records)
        click.echo(f"{Path(run_dir) / 'results.md'}: rewritten with 95% intervals")
    elif export_run(run_dir) is None:
        raise ClipxUsageError(f"{run_dir}: no evaluation results with per-sample flags")
    path = Path(run_dir) / SAMPLES_FILE
    if not path.is_file():
        raise ClipxUsageError(f"{run_dir}: no evaluation results with per-sample flags")
    blocks = read_samples(path)
    models = len({b.label for b in blocks})
    click.echo(f"{path}: {len(blocks)} blocks ({models} models x seeds x views)")
