"""The analysis commands end to end: options -> models and protocol -> data -> JSON + plots in a
run dir (locked against a second process, as `clipx eval` locks its run dir)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..params.values import check_device
from ..run.evaluate import eval_protocol
from ..run.lock import RunLock, check_writable
from ..utils.devices import resolve_device
from ..utils.io import atomic_write_json
from ..utils.log import log
from .common import resolve_models
from .features import JSON_NAME as FEATURES_JSON
from .features import PLOTS, run_features, single_image_attack
from .interpolate import JSON_NAME as INTERPOLATION_JSON
from .interpolate import PLOT_NAME, parse_alphas, run_interpolation
from .plots import plot_cosines, plot_interpolation, plot_projection, plot_separation


@dataclass
class AnalysisResult:
    run_dir: Path
    doc: dict[str, Any]
    files: dict[str, Path]


def _protocol(options: dict[str, Any]) -> tuple[dict[str, Any], Any]:

    keys = ("protocol", "attacks", "eps", "datasets", "n_samples", "templates", "seed", "overrides")
    return eval_protocol(*(options[k] for k in keys))


def interpolate(
    model_a: str,
    model_b: str,
    alphas: str,
    arch: str | None = None,
    labels: tuple[str, ...] = (),
    run_dir: str | None = None,
    device: str = "auto",
    **protocol_options: Any,
) -> AnalysisResult:
    """`clipx interpolate A B`: interpolation.json + interpolation.png in run_dir."""

    values = parse_alphas(alphas)
    models = resolve_models((model_a, model_b), arch, labels)
    section, protocol = _protocol(protocol_options)
    check_device(device, "--device")
    folder = Path(run_dir or Path("runs") / f"interpolate-{models[0].label}-{models[1].label}")
    with RunLock(folder, resume=True, what="interpolation"):
        check_writable(folder)
        log(f"interpolating {models[0].label} -> {models[1].label} at {values} into {folder}")
        doc = run_interpolation(models, values, section, protocol, folder, resolve_device(device))
        files = {
            "json": atomic_write_json(folder / INTERPOLATION_JSON, doc),
            "plot": plot_interpolation(doc, folder / PLOT_NAME),
        }
    return AnalysisResult(folder, doc, files)


def features(
    models: tuple[str, ...],
    arch: str | None = None,
    labels: tuple[str, ...] = (),
    projection: str = "pca",
    bins: int = 40,
    run_dir: str | None = None,
    device: str = "auto",
    **protocol_options: Any,
) -> AnalysisResult:
    """`clipx features MODEL...`: features.json + cosine, separation and projection plots."""
    import dataclasses

    resolved = resolve_models(models, arch, labels)
    section, protocol = _protocol(protocol_options)
    # how far the attack moves embeddings is read at its final iterate: early exit would stop
    # each sample at its first misclassified one (the clean-misclassified at the random start)
    section, protocol = (
        {**section, "early_exit": False},
        dataclasses.replace(protocol, early_exit=False),
    )
    single_image_attack(protocol)  # before a run dir is made
    check_device(device, "--device")
    folder = Path(run_dir or Path("runs") / ("features-" + "-".join(m.label for m in resolved)))
    with RunLock(folder, resume=True, what="features"):
        check_writable(folder)
        log(f"features of {', '.join(m.label for m in resolved)} into {folder}")
        doc = run_features(resolved, section, protocol, resolve_device(device), projection, bins)
        files = {"json": atomic_write_json(folder / FEATURES_JSON, doc)}
        for name, draw in (
            ("cosine", plot_cosines),
            ("separation", plot_separation),
            ("projection", plot_projection),
        ):
            files[name] = draw(doc, folder / PLOTS[name])
    return AnalysisResult(folder, doc, files)
