"""`clipx laat ...`: paper mode (train from scratch, zero-shot on novel classes) and anchor stats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

PAPER_TOML = Path(__file__).with_name("paper.toml")


def load_paper_config(
    config: str | Path | None = None, profile: str | None = None, overrides=()
) -> dict[str, Any]:
    """paper.toml (or `config`) with a profile and `--set key=value` overrides, merged by the
    recipe rules (`unset` included)."""
    from clip_robust_ext.api import load_config

    return load_config(Path(config) if config else PAPER_TOML, profile, overrides, "laat paper")


@click.command("paper")
@click.option(
    "--profile", "-p", default=None, help="default | smoke | paper | resnet12 (see paper.toml)."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a key of the paper-mode config, e.g. epochs=4, heads=['expanded'].",
)
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    default=None,
    help="Another paper-mode TOML (default: the shipped paper.toml).",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where results go (default: runs/laat-paper-<profile>).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run in --run-dir (finished heads are kept).",
)
@click.option("--show", is_flag=True, help="Print the resolved config and exit.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def paper(profile, overrides, config, run_dir, resume, show, as_json) -> None:
    """Train a backbone from scratch against CLIP text anchors (expanded and raw), PGD-7 at 8/255
    on the seen classes; report zero-shot clean / PGD-20 (/ AutoAttack) accuracy on the novel ones."""
    from clip_robust_ext.api import fit_markdown

    from .paper import PaperConfig, run_paper

    doc = load_paper_config(config, profile, overrides)
    cfg = PaperConfig.from_dict(doc)
    if show:
        click.echo(json.dumps(doc, indent=2))
        return
    out = Path(run_dir or f"runs/laat-paper-{profile or 'default'}")
    results = run_paper(cfg, out, echo=lambda s: click.echo(s, err=True), resume=resume)
    if as_json:
        click.echo(json.dumps(results, indent=2, default=str))
    else:
        click.echo(fit_markdown((out / "results.md").read_text()), nl=False)
        click.echo(f"\nResults in {out}", err=True)


@click.command("anchors")
@click.option(
    "--model",
    "model_name",
    default="clipx-small-c10",
    show_default=True,
    help="Registry model.",
)
@click.option(
    "--dataset",
    default="cifar10-jpegs",
    show_default=True,
    help="Dataset whose class names are used.",
)
@click.option("--split", default="test", show_default=True)
@click.option(
    "--novel", multiple=True, help="Novel class (repeat); the map is fitted on the others."
)
@click.option("--template", "templates", multiple=True, help="Prompt template(s) with '{}'.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def anchors(model_name, dataset, split, novel, templates, as_json) -> None:
    """Mean pairwise cosine of the text anchors before and after LAAT's expansion."""
    from clip_robust_ext.api import get

    from .anchors import LAAT_TEMPLATES, build_anchor_set, text_anchors
    from .paper import resolve_split

    ds = get("datasets", dataset).obj(split=split)
    seen, nov = resolve_split(list(ds.classnames), None, list(novel) if novel else None)
    loaded = get("models", model_name).obj()
    tpl = list(templates) or list(LAAT_TEMPLATES)
    raw = build_anchor_set(
        text_anchors(loaded, seen, tpl), text_anchors(loaded, nov, tpl), expand=False
    )
    exp = build_anchor_set(raw.seen, raw.novel, expand=True)
    report = {
        "model": model_name,
        "seen": seen,
        "novel": nov,
        "raw": raw.stats(),
        "expanded": exp.stats(),
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"seen: {', '.join(seen)}\nnovel: {', '.join(nov)}")
    click.echo("mean pairwise cosine   seen    novel   all")
    for name, st in (("raw", report["raw"]), ("expanded", report["expanded"])):
        click.echo(
            f"{name:<22} {st['seen_mean_pairwise_cos']:+.3f}  {st['novel_mean_pairwise_cos']:+.3f}  "
            f"{st['all_mean_pairwise_cos']:+.3f}"
        )
    click.echo(f"theta_max (seen) = {report['expanded']['theta_max_deg']:.1f} deg")


def register(cli: click.Group) -> None:
    @cli.group("laat", context_settings={"help_option_names": ["-h", "--help"]})
    def laat() -> None:
        """LAAT: language-driven anchors (paper mode; CLIP mode is `clipx recipe run laat`)."""

    laat.add_command(paper)
    laat.add_command(anchors)
