"""`clipx data ...`: download the evaluation suite, lay out hand-fetched archives, list what is
present. Loading this module is cheap (click only); commands import torch when they run."""

from __future__ import annotations

import json
from typing import Any

import click

from .errors import ClipxError, ClipxUsageError, closest
from .evaluation import protocol_from_dict
from .registry import names
from .utils.io import write_stdout
from .utils.terminal import WIDTH

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
root_option = click.option(
    "--root",
    type=click.Path(file_okay=False),
    default=None,
    help="Data root (default: $CLIPX_DATA, else ~/.cache/clipx/data).",
)
split_option = click.option("--split", default="test", show_default=True, help="Dataset split.")


def suite_datasets(targets: tuple[str, ...]) -> list[str]:
    """Dataset names of the given dataset or protocol names (all suite datasets if none)."""
    from .data import suite_names

    suite = suite_names()
    if not targets:
        return suite
    out: list[str] = []
    for target in targets:
        if target in suite:
            found = [target]
        elif target in names("evaluators"):
            specs = protocol_from_dict({"protocol": target}).datasets
            found = [s["dataset"] for s in specs if s["dataset"] in suite]
            if not found:
                click.echo(
                    f"clipx: protocol '{target}' uses no torchvision suite dataset", err=True
                )
        else:
            raise ClipxUsageError(
                f"'{target}' is neither a suite dataset nor a protocol"
                f"{closest(target, [*suite, *names('evaluators')])} (datasets: {', '.join(suite)})"
            )
        out += [n for n in found if n not in out]
    return out


def status(name: str, root: Any, split: str) -> dict[str, Any]:
    """Whether the loader finds `name` (built without download: what `clipx eval` would see)."""
    from .data import data_root, load_suite_dataset
    from .data.manage import fix_command

    row: dict[str, Any] = {"dataset": name, "split": split}
    try:
        ds = load_suite_dataset(name, root, split=split, download=False)
    except ClipxError:
        return {**row, "status": "missing", "fix": fix_command(name, data_root(root))}
    return {**row, "status": "present", "images": len(ds), "classes": len(ds.classnames)}


@click.group("data", context_settings=CONTEXT)
def data() -> None:
    """Get the evaluation datasets: download, prepare hand-fetched archives, list."""


@data.command("list")
@click.argument("targets", nargs=-1, metavar="[DATASET|PROTOCOL]...")
@root_option
@split_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def data_list(targets: tuple[str, ...], root: str | None, split: str, as_json: bool) -> None:
    """Which suite datasets (of a protocol, e.g. tecoa-16) are present, and how to get the rest."""
    rows = [status(name, root, split) for name in suite_datasets(targets)]
    if as_json:
        write_stdout(json.dumps(rows, indent=2) + "\n", "--json")
        return
    for row in rows:
        what = (
            f"present  {row['images']} images, {row['classes']} classes"
            if row["status"] == "present"
            else f"missing  {row['fix']}"
        )
        line = f"{row['dataset']:<14} {what}"
        if len(line) <= WIDTH:
            click.echo(line)
            continue
        # too wide for a terminal: the fix below, one step per line, commands never broken
        click.echo(f"{row['dataset']:<14} missing")
        steps = row["fix"].replace(", then: ", "\nthen: ").replace(" (or ", "\n(or ")
        for step in steps.splitlines():
            click.echo(f"    {step}")


@data.command("download")
@click.argument("targets", nargs=-1, required=True, metavar="DATASET|PROTOCOL...")
@root_option
@split_option
def data_download(targets: tuple[str, ...], root: str | None, split: str) -> None:
    """Download what torchvision can (progress bars on stderr); say how to get the rest."""
    from .data import data_root, load_suite_dataset
    from .data.manage import MANUAL

    failed = []
    for name in suite_datasets(targets):
        if name in MANUAL:
            row = status(name, root, split)
            click.echo(
                f"{name}: {row['status']}"
                + ("" if row["status"] == "present" else f"; {row['fix']}")
            )
            failed += [] if row["status"] == "present" else [name]
            continue
        click.echo(f"{name}: downloading into {data_root(root)}", err=True)
        ds = load_suite_dataset(name, root, split=split, download=True)
        click.echo(f"{name}: present, {len(ds)} images")
    if failed:
        raise ClipxError(f"not downloadable, fetch by hand: {', '.join(failed)} (see above)")


@data.group("prepare", context_settings=CONTEXT)
def prepare() -> None:
    """Lay out archives fetched by hand the way the loaders read them."""


@prepare.command("tiny-imagenet")
@click.argument("source", type=click.Path(exists=True))
@root_option
def prepare_tiny(source: str, root: str | None) -> None:
    """SOURCE: tiny-imagenet-200.zip as distributed (or its extracted folder) -> class folders
    for validation (from val_annotations.txt) and training, plus class names from words.txt."""
    from .data.manage import prepare_tiny_imagenet

    out = prepare_tiny_imagenet(source, root)
    click.echo(f"tiny-imagenet: {out} ready (val_folders/, train_folders/, classnames.txt)")


@prepare.command("imagenet-val")
@click.argument("devkit", type=click.Path(exists=True, dir_okay=False))
@click.argument("val_tar", type=click.Path(exists=True, dir_okay=False))
@root_option
def prepare_imagenet(devkit: str, val_tar: str, root: str | None) -> None:
    """DEVKIT (ILSVRC2012_devkit_t12.tar.gz) + VAL_TAR (ILSVRC2012_img_val.tar) -> imagenet/val/
    in class folders, by torchvision's parser (checksums checked)."""
    from .data.manage import prepare_imagenet_val

    out = prepare_imagenet_val(devkit, val_tar, root)
    click.echo(f"imagenet-val: {out} ready")
