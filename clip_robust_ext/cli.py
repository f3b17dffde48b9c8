"""The `clipx` command line (click). Heavy modules (torch, open_clip) load inside commands.

Exit codes: 0 success, 1 runtime failure (ClipxError, one line), 2 usage or recipe error
(ClipxUsageError or click's usage errors). `--json` prints exactly one JSON document on stdout;
progress and messages go to stderr. Plugins add commands through the register_commands hook.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import ClipxError, ClipxUsageError
from .plugin_manager import hook_callers, load_errors, note_error, plugin_info, trace
from .recipes import list_recipes, resolve
from .registry import KINDS, entries, registry_errors
from .utils.io import write_stdout
from .utils.malloc import tune_malloc
from .utils.terminal import fit_markdown, fit_rows

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Failure(click.ClickException):
    """A ClipxError shown as one 'Error: ...' line with its exit code (1 runtime, 2 usage)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """ClipxUsageError -> exit 2, ClipxError / OS errors -> exit 1; never a traceback."""
    try:
        yield
    except ClipxUsageError as exc:
        raise Failure(_one_line(exc), 2) from None
    except ClipxError as exc:
        raise Failure(_one_line(exc), 1) from None
    except OSError as exc:  # full disk, unwritable run dir, missing file
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        raise Failure(f"{exc.strerror or _one_line(exc)}{where}", 1) from None


def _one_line_usage(exc: click.UsageError, ctx: click.Context | None) -> Failure:
    """click prints usage + hint + error on three lines; clipx prints one (exit code 2)."""
    where = (exc.ctx or ctx).command_path if (exc.ctx or ctx) is not None else "clipx"
    return Failure(f"{_one_line_text(exc.format_message())} (see '{where} --help')", exc.exit_code)


def _one_line_text(text: str) -> str:
    return " ".join(text.split())


class ClipxGroup(click.Group):
    """The top-level group: maps clipx errors to exit codes; loads plugin commands lazily."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _one_line_usage(exc, None) from None

    def invoke(self, ctx: click.Context) -> Any:
        with user_errors():
            try:
                return super().invoke(ctx)
            except click.UsageError as exc:
                raise _one_line_usage(exc, ctx) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        load_plugin_commands(self)
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is None:
            load_plugin_commands(self)
            cmd = super().get_command(ctx, name)
        return cmd


_commands_from: set[str] = set()  # plugins whose register_commands already ran
_builtin_commands: dict[str, click.Command] = {}


def load_plugin_commands(group: click.Group) -> None:
    """Call each plugin's register_commands once; a failing plugin is reported, not fatal, and
    cannot replace a built-in command."""

    if not _builtin_commands:
        _builtin_commands.update(group.commands)
    for plugin, caller in hook_callers("register_commands"):
        if plugin in _commands_from:
            continue
        _commands_from.add(plugin)
        try:
            trace("register_commands", plugin)
            caller(cli=group)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the CLI
            note_error("commands", plugin, f"register_commands failed: {type(exc).__name__}: {exc}")
        for name, cmd in _builtin_commands.items():
            if group.commands.get(name) is not cmd:
                group.commands[name] = cmd
                note_error("commands", plugin, f"command '{name}' is built in; not replaced")


def emit_json(obj: Any) -> None:
    write_stdout(json.dumps(obj, indent=2, default=str) + "\n", "--json")


@contextlib.contextmanager
def stdout_to_stderr(enabled: bool = True) -> Iterator[None]:
    """Under --json, anything a library prints goes to stderr, so stdout stays one document."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def print_table(rows: list[dict[str, Any]], columns: list[str], empty: str = "(none)") -> None:
    if not rows:
        click.echo(empty)
        return
    cells = [[_cell(r.get(c, "")) for c in columns] for r in rows]
    for line in fit_rows(columns, cells):
        click.echo(line.rstrip())


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return " ".join(str(value).split())


json_option = click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a dotted recipe key (value parsed as TOML), e.g. defense.lr=1e-5, baselines.0.epochs=2.",
)
download_option = click.option(
    "--download",
    is_flag=True,
    help="Download every torchvision dataset the run needs into $CLIPX_DATA (clipx data download).",
)
profile_option = click.option(
    "--profile", "-p", default=None, help="A profile of the recipe (default: the base recipe)."
)


@click.group(cls=ClipxGroup, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="clipx")
def cli() -> None:
    """clipx: attack and defend CLIP on top of torchattacks, AutoAttack, TextAttack and open_clip.

    \b
    Run a method end to end:     clipx recipe run tecoa
    Evaluate a checkpoint:       clipx eval --model clipx-small-c10 --protocol NAME
    See what is installed:       clipx plugins / attacks / defenses / datasets / models
    Compare two models:          clipx interpolate A B / clipx features A B (clipx interpolate -h)
    """


# ---------------------------------------------------------------------------------- recipes


@cli.group(context_settings=CONTEXT)
def recipe() -> None:
    """List, show and run TOML recipes (shipped ones, plugin ones, or a path to a .toml file)."""


@recipe.command("list")
@json_option
def recipe_list(as_json: bool) -> None:
    """List the registered recipes and their profiles."""

    rows = list_recipes()
    if as_json:
        emit_json(rows)
    else:
        print_table(rows, ["name", "profiles", "plugin", "description"])


@recipe.command("show")
@click.argument("name")
@profile_option
@set_option
@json_option
def recipe_show(name: str, profile: str | None, overrides: tuple[str, ...], as_json: bool) -> None:
    """Print the resolved recipe NAME (a registered name or a .toml path) as TOML or JSON."""

    with stdout_to_stderr(as_json):
        resolved = resolve(name, profile, overrides)
    if as_json:
        emit_json(resolved.to_dict())
    else:
        click.echo(f"# {resolved.source} (profile: {resolved.profile})")
        click.echo(resolved.to_toml(), nl=False)


@recipe.command("run")
@click.argument("name")
@profile_option
@set_option
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where results go (default: runs/<name>-<profile>).",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --run-dir.")
@download_option
@json_option
def recipe_run(
    name: str,
    profile: str | None,
    overrides: tuple[str, ...],
    run_dir: str | None,
    resume: bool,
    download: bool,
    as_json: bool,
) -> None:
    """Run recipe NAME: pretrain / defend / evaluate, then print the results table."""
    from .data.manage import allow_downloads
    from .run.stages import run_recipe

    with stdout_to_stderr(as_json), allow_downloads(download):
        result = run_recipe(
            name, profile=profile, run_dir=run_dir, resume=resume, overrides=overrides
        )
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(fit_markdown(result.table), nl=False)
        click.echo(f"\nResults in {result.run_dir}", err=True)


# ------------------------------------------------------------------------------- registries


def _entry_rows(kind: str, with_params: bool = False) -> list[dict[str, Any]]:

    rows = []
    for name, entry in entries(kind).listing():
        row: dict[str, Any] = {"name": name}
        if entry.modality:
            row["modality"] = entry.modality
        row["plugin"] = entry.plugin
        row["description"] = entry.description
        if entry.protocol_params:
            row["meta"] = {"protocol_params": list(entry.protocol_params)}
        if with_params:
            row["params"] = _params_of(entry.obj)
        rows.append(row)
    return rows


def _params_of(obj: Any) -> dict[str, Any]:
    """Parameter -> default (None when required) of a factory, for recipe writers."""
    import inspect

    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return {}
    out = {}
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in ("self", "model"):
            continue
        default = None if p.default is p.empty else p.default
        out[p.name] = (
            default if isinstance(default, (int, float, str, bool, type(None))) else repr(default)
        )
    return out


strict_option = click.option(
    "--strict",
    is_flag=True,
    help="Exit with code 1 when a plugin failed or two plugins register the same name.",
)


def fail_if_strict(strict: bool, kinds: tuple[str, ...] | None = None) -> None:
    """Under --strict, plugin problems (failed hooks, name clashes) of `kinds` end with exit 1."""
    problems = [
        f"plugin '{e['plugin']}': {e['error']}"
        for e in registry_errors
        if kinds is None or e["kind"] in kinds
    ]
    problems += [f"plugin '{e.name}': {e.error}" for e in load_errors] if kinds is None else []
    if strict and problems:
        raise Failure(f"--strict: {len(problems)} plugin problem(s): {'; '.join(problems)}", 1)


def _registry_command(kind: str, help_text: str, columns: list[str], params: bool = False):
    @json_option
    @strict_option
    def command(as_json: bool, strict: bool = False, **filters: Any) -> None:
        with stdout_to_stderr(as_json):
            rows = _entry_rows(kind, with_params=params)
        modality = filters.get("modality")
        if modality:
            rows = [r for r in rows if r.get("modality") == modality]
        if as_json:
            emit_json(rows)
        else:
            print_table(rows, columns)
        fail_if_strict(strict, (kind,))

    command.__doc__ = help_text
    return command


cli.command("attacks")(
    click.option(
        "--modality",
        type=click.Choice(["image", "text", "multimodal", "retrieval"]),
        default=None,
        help="Only attacks of this modality.",
    )(
        _registry_command(
            "attacks",
            "List attacks: name, modality, plugin, description.",
            ["name", "modality", "plugin", "description"],
            params=True,
        )
    )
)


@cli.command("defenses")
@json_option
@strict_option
def defenses(as_json: bool, strict: bool) -> None:
    """List defenses: training losses and test-time defenses (`clipx testtime`), with parameters."""
    with stdout_to_stderr(as_json):
        rows = [{**r, "kind": "training"} for r in _entry_rows("defenses", with_params=True)]
        rows += [{**r, "kind": "test-time"} for r in _entry_rows("testtime", with_params=True)]
    if as_json:
        emit_json(rows)
    else:
        print_table(rows, ["name", "kind", "plugin", "description"])
    fail_if_strict(strict, ("defenses", "testtime"))


cli.command("testtime")(
    _registry_command(
        "testtime",
        "List test-time defenses (protocol key `testtime`) and their parameters.",
        ["name", "plugin", "description"],
        params=True,
    )
)
cli.command("datasets")(
    _registry_command(
        "datasets", "List dataset sources.", ["name", "plugin", "description"], params=True
    )
)
_model_sources = _registry_command(
    "models", "List model sources.", ["name", "plugin", "description"], params=True
)


@cli.command("models")
@click.option(
    "--zoo", is_flag=True, help="List published robust CLIP checkpoints (--model zoo:NAME)."
)
@json_option
def models_command(zoo: bool, as_json: bool) -> None:
    """List model sources; --zoo: the published robust checkpoints with their reported numbers."""
    if not zoo:
        return _model_sources(as_json=as_json)
    from .models.zoo import zoo_rows

    rows = zoo_rows()
    if as_json:
        emit_json(rows)
    else:
        print_table(rows, ["name", "arch", "method", "eps", "numbers", "where", "source"])


@cli.command("export")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option(
    "--hub-folder",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder to write: open_clip config + safetensors + model card (local-dir:/hf-hub: ready).",
)
@click.option(
    "--merge-adapter",
    is_flag=True,
    help="A LoRA / first-blocks model: write full weights with the adapter folded in (default: "
    "the adapter folder alone, which loads onto its base with --adapter).",
)
def export_command(model_dir: str, hub_folder: str, merge_adapter: bool) -> None:
    """Export a trained model (RUN_DIR/LABEL) as an open_clip hub folder with a model card."""
    from .export import export_hub_folder

    click.echo(f"wrote {export_hub_folder(model_dir, hub_folder, merge_adapter)}")


_list_protocols = _registry_command(
    "evaluators", "List evaluation protocols.", ["name", "plugin", "description"]
)


@cli.group("protocols", invoke_without_command=True, context_settings=CONTEXT)
@json_option
@click.pass_context
def protocols_group(ctx: click.Context, as_json: bool) -> None:
    """List evaluation protocols; `clipx protocols show NAME` prints one in full."""
    if ctx.invoked_subcommand is None:
        _list_protocols(as_json=as_json)


@protocols_group.command("show")
@click.argument("name")
@json_option
def protocols_show(name: str, as_json: bool) -> None:
    """Print protocol NAME resolved: every field, each attack with its parameters and defaults."""
    from .evaluation.presets import show_protocol
    from .recipes import dump_toml

    with stdout_to_stderr(as_json):
        doc = show_protocol(name)
    if as_json:
        emit_json(doc)
    else:
        click.echo(f"# protocol {name} (plugin: {doc['plugin']})")
        click.echo(dump_toml(doc), nl=False)


cli.command("templates")(
    _registry_command("templates", "List prompt template sets.", ["name", "plugin", "description"])
)


@cli.command("plugins")
@json_option
@strict_option
def plugins_command(as_json: bool, strict: bool) -> None:
    """List plugins (built-ins included): distribution, version, hooks and any load errors."""

    with stdout_to_stderr(as_json):
        for kind in KINDS:  # building the registries surfaces failing hooks and name clashes
            entries(kind)
        load_plugin_commands(cli)
        rows = plugin_info()
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        r["errors"] = []
    for err in load_errors:
        row = by_name.get(err.name)
        if row is None:
            row = {
                "name": err.name,
                "distribution": err.distribution,
                "version": "",
                "builtin": False,
                "hooks": [],
                "errors": [],
                "loaded": False,
            }
            by_name[err.name] = row
            rows.append(row)
        row["errors"].append(err.error)
    for err in registry_errors:
        if err["plugin"] in by_name:
            by_name[err["plugin"]]["errors"].append(err["error"])
    for r in rows:
        r.setdefault("loaded", True)
    if as_json:
        emit_json(
            {
                "plugins": rows,
                "load_errors": [e.to_dict() for e in load_errors],
                "registry_errors": list(registry_errors),
            }
        )
    else:
        print_table(rows, ["name", "distribution", "version", "hooks"])
        for r in rows:
            for error in r["errors"]:
                click.echo(f"error in plugin '{r['name']}': {error}", err=True)
    fail_if_strict(strict)


@cli.group("plugin", context_settings=CONTEXT)
def plugin_group() -> None:
    """Write a new plugin (`clipx plugins` lists the installed ones)."""


@plugin_group.command("new")
@click.argument("name")
@click.option(
    "--dir",
    "parent",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder to create the plugin's folder (clipx-NAME) in.",
)
def plugin_new(name: str, parent: str) -> None:
    """Write a working plugin skeleton NAME: pyproject with the clipx entry point, one attack,
    its tests. Then: cd clipx-NAME && pip install -e . && python -m pytest tests."""
    from .scaffold import new_plugin

    root = new_plugin(name, parent)
    click.echo(f"wrote {root}")
    click.echo(f"next: cd {root} && pip install -e . && python -m pytest tests", err=True)


# ------------------------------------------------------------------------------------- eval


_PROTOCOL_OPTIONS = (
    click.option("--protocol", required=True, help="Evaluation protocol (clipx protocols)."),
    click.option(
        "--attack", "attacks", multiple=True, help="Attack(s) to run instead of the protocol's."
    ),
    click.option(
        "--eps", "eps", multiple=True, help="Budget(s), e.g. 1/255 (instead of the protocol's)."
    ),
    click.option(
        "--dataset", "datasets", multiple=True, help="Dataset(s) instead of the protocol's."
    ),
    click.option(
        "--n-samples",
        "--n",
        "n_samples",
        type=click.IntRange(min=1),
        default=None,
        help="Samples per dataset (under torchrun write --n-samples: torchrun reads --n as its own).",
    ),
    click.option("--templates", default=None, help="Template set (clipx templates)."),
    click.option("--seed", type=int, default=None, help="Sampling / attack seed."),
    click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override another protocol field (value parsed as TOML).",
    ),
)


def protocol_options(command: Any) -> Any:
    """`clipx eval`'s protocol options (--protocol, --attack, --eps, --dataset, --n, --templates,
    --seed, --set) on another command that evaluates under a protocol."""
    for option in reversed(_PROTOCOL_OPTIONS):
        command = option(command)
    return command


@cli.command("eval")
@click.option(
    "--model",
    "model",
    required=True,
    help="A model source (clipx models), an open_clip architecture, hf-hub:ORG/NAME, "
    "local-dir:PATH, zoo:NAME (clipx models --zoo), or a checkpoint file.",
)
@click.option(
    "--arch",
    default=None,
    help="open_clip architecture, hf-hub:ORG/NAME or local-dir:PATH (with --model open_clip "
    "or a checkpoint).",
)
@click.option(
    "--pretrained",
    default=None,
    help="open_clip pretrained tag, hf-hub:ORG/NAME, local-dir:PATH or checkpoint path.",
)
@click.option(
    "--checkpoint",
    default=None,
    type=click.Path(dir_okay=False),
    help="Weights loaded into the built model (any supported checkpoint format).",
)
@click.option(
    "--model-arg",
    "model_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="Another argument of the model source (value parsed as TOML).",
)
@click.option(
    "--adapter",
    default=None,
    help="A LoRA / first-blocks adapter folder (path, local-dir:PATH or hf-hub:ORG/NAME) put on "
    "the model; refused unless the model is the adapter's base.",
)
@protocol_options
@click.option(
    "--testtime",
    multiple=True,
    help="Test-time defense(s) (clipx testtime): the model is also scored behind each, under "
    "non-adaptive and adaptive attacks (protocol fields testtime, testtime_modes).",
)
@click.option(
    "--label", default=None, help="Name of this model in the results (default: from --model)."
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where results go (default: runs/eval-<label>); may hold earlier datasets.",
)
@click.option("--device", default="auto", help="auto, cpu, cuda, cuda:N.")
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Evaluate only shard I of N (0 <= I < N; array jobs), resumable; then clipx eval-merge.",
)
@download_option
@json_option
def eval_command(as_json: bool, download: bool, **options: Any) -> None:
    """Evaluate a model or checkpoint under a protocol, without a recipe. Runs as one process or
    under torchrun, srun or accelerate launch (docs/distributed.md)."""
    from .data.manage import allow_downloads
    from .evaluation.distributed import finish, world
    from .run.evaluate import run_eval

    with stdout_to_stderr(as_json), allow_downloads(download):
        result = run_eval(**options)
    if world()[0] == 0:
        _print_result(result, as_json, "Shard in" if options["shard"] else "Results in")
    finish()


def _print_result(result: Any, as_json: bool, where: str) -> None:
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(fit_markdown(result.table), nl=False)
        click.echo(f"\n{where} {result.run_dir}", err=True)


@cli.command("eval-merge")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@json_option
def eval_merge_command(run_dir: str, as_json: bool) -> None:
    """Merge the shards of `clipx eval --shard I/N` in RUN_DIR into its results; refuses missing,
    unfinished or overlapping shards. The merged per-sample results equal one process's."""
    from .run.evaluate import eval_merge

    with stdout_to_stderr(as_json):
        result = eval_merge(run_dir)
    _print_result(result, as_json, "Merged into")


@cli.command("leaderboard")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", default="leaderboard", type=click.Path(file_okay=False), show_default=True)
@click.option(
    "--protocol", default=None, help="Rank this protocol hash (prefix); default: the most cards."
)
@click.option("--all-reported", is_flag=True, help="List every zoo model's published numbers.")
@json_option
def leaderboard_command(
    paths: tuple[str, ...], out: str, protocol: str | None, all_reported: bool, as_json: bool
) -> None:
    """Rank the result cards under PATHS (run dirs or card files) that share a protocol hash:
    markdown, CSV, sortable HTML and plots in --out; other cards are set apart, with why."""
    from .evaluation.leaderboard import build, write

    board = build(list(paths), protocol, all_reported)
    files = write(board, out)
    if as_json:
        emit_json({k: v for k, v in board.items() if k != "cards"} | {"files": files})
    else:
        click.echo(fit_markdown((Path(out) / "leaderboard.md").read_text()), nl=False)
        click.echo(f"\nLeaderboard in {out}", err=True)


from .datacli import data as _data  # noqa: E402 - `clipx data ...` (click only at import)

cli.add_command(_data)

from .comparecli import compare_command, samples_command  # noqa: E402 - click only at import

cli.add_command(compare_command)
cli.add_command(samples_command)


# --------------------------------------------------------------------------------- analysis

_arch_option = click.option(
    "--arch",
    default=None,
    help="open_clip architecture for checkpoint-file arguments (default: load them into the "
    "model named among the arguments).",
)
_analysis_options = (
    click.option(
        "--label", "labels", multiple=True, help="Name of each model, in order (default: from it)."
    ),
    click.option(
        "--run-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Where results go (default: runs/<command>-<labels>).",
    ),
    click.option("--device", default="auto", help="auto, cpu, cuda, cuda:N."),
)


def _analysis(command: Any) -> Any:
    for option in reversed((_arch_option, protocol_options, *_analysis_options, json_option)):
        command = option(command)
    return command


def _report(result: Any, as_json: bool, lines: list[str]) -> None:
    if as_json:
        emit_json(result.doc)
        return
    click.echo("\n".join(lines))
    for path in result.files.values():
        click.echo(f"wrote {path}", err=True)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@cli.command("interpolate")
@click.argument("model_a")
@click.argument("model_b")
@click.option(
    "--alphas",
    default="0,0.25,0.5,0.75,1",
    show_default=True,
    help="Blend weights, comma-separated.",
)
@_analysis
def interpolate_command(as_json: bool, **options: Any) -> None:
    """Evaluate weight-space blends (1 - alpha) A + alpha B of two models of one architecture
    (WiSE-FT) under a protocol; plot clean and robust accuracy against alpha.

    \b
    MODEL_A / MODEL_B: as `clipx eval --model` takes them; a checkpoint file is loaded into --arch
    or into the other argument's model, e.g.
      clipx interpolate clipx-small-c10 runs/tecoa-cifar10/tecoa/final.pt --protocol pgd \\
        --dataset cifar10-jpegs --n 200
    """
    from .analysis.run import interpolate

    with stdout_to_stderr(as_json):
        result = interpolate(**options)
    lines = ["ALPHA  DATASET  EPS  CLEAN  ROBUST"]
    for p in result.doc["points"]:
        robust = "-" if p["robust_acc"] is None else f"{p['robust_acc']:.2f}"
        lines.append(
            f"{p['alpha']:g}  {p['dataset']}  {p['eps_str'] or '-'}  {p['clean_acc']:.2f}  {robust}"
        )
    _report(result, as_json, lines)


@cli.command("features")
@click.argument("models", nargs=-1, required=True)
@click.option(
    "--projection",
    type=click.Choice(["pca", "tsne"]),
    default="pca",
    show_default=True,
    help="2-D projection of the embeddings (scikit-learn).",
)
@click.option(
    "--bins", type=click.IntRange(2, 500), default=40, show_default=True, help="Histogram bins."
)
@_analysis
def features_command(as_json: bool, **options: Any) -> None:
    """Compare clean and adversarial image embeddings of one or more models: cosine histograms,
    per-class separation and a 2-D projection (one dataset, one eps, one image attack).

    \b
    MODELS: as `clipx eval --model` takes them; a checkpoint file is loaded into --arch or into
    the first model named, e.g.
      clipx features clipx-small-c10 runs/tecoa-cifar10/tecoa/final.pt --protocol pgd \\
        --dataset cifar10-jpegs --n 200
    """
    from .analysis.run import features

    with stdout_to_stderr(as_json):
        result = features(**options)
    lines = ["MODEL  CLEAN  ADV  COS_MEAN  SIL_CLEAN  SIL_ADV"]
    for m in result.doc["models"]:
        sep = m["separation"]
        lines.append(
            f"{m['label']}  {m['clean_acc']:.2f}  {m['adversarial_acc']:.2f}  "
            f"{m['cosine']['mean']:.4f}  {_num(sep['clean']['silhouette'])}  "
            f"{_num(sep['adversarial']['silhouette'])}"
        )
    _report(result, as_json, lines)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: no traceback for user errors, whatever raises them."""

    tune_malloc()  # CPU attack loops: no page faults for re-allocated activations (utils/malloc.py)
    try:
        cli.main(args=argv, prog_name="clipx", standalone_mode=True)
    except ClipxUsageError as exc:  # raised outside a command (e.g. while loading plugins)
        click.echo(f"Error: {_one_line(exc)}", err=True)
        sys.exit(2)
    except ClipxError as exc:
        click.echo(f"Error: {_one_line(exc)}", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
