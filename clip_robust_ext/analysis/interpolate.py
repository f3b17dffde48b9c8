"""Weight-space interpolation between two models of one architecture (WiSE-FT, Wortsman et al.
2022): theta(alpha) = (1 - alpha) theta_A + alpha theta_B, each blend evaluated by the evaluation
engine under one protocol, so alpha 0 and 1 are exactly A's and B's own `clipx eval` numbers."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ClipxUsageError
from ..evaluation import evaluate
from ..evaluation.records import model_fingerprint
from .common import ModelArg, load, provenance

JSON_NAME = "interpolation.json"
PLOT_NAME = "interpolation.png"


def parse_alphas(text: str) -> list[float]:
    """'0,0.25,1' -> [0.0, 0.25, 1.0] (sorted, unique); each alpha in [0, 1]."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ClipxUsageError(f"--alphas: {part.strip()!r} is not a number") from None
        if not 0.0 <= value <= 1.0:
            raise ClipxUsageError(f"--alphas: {value:g} is outside [0, 1]")
        values.append(value)
    return sorted(set(values))


def check_same_architecture(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names: Sequence[str] = ("A", "B")
) -> None:
    """Blending needs the same tensors on both sides: the first differences, in one line."""
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    shapes = [
        f"{k}: {tuple(a[k].shape)} vs {tuple(b[k].shape)}"
        for k in a
        if k in b and a[k].shape != b[k].shape
    ]
    parts = []
    if only_a:
        parts.append(f"{len(only_a)} keys only in {names[0]} (e.g. {only_a[:3]})")
    if only_b:
        parts.append(f"{len(only_b)} keys only in {names[1]} (e.g. {only_b[:3]})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
    if parts:
        raise ClipxUsageError(
            f"cannot interpolate {names[0]} and {names[1]}: not the same architecture: "
            + "; ".join(parts)
        )


def blend_state(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """(1 - alpha) a + alpha b per floating tensor (torch.lerp: exactly a at 0, exactly b at 1),
    BatchNorm running statistics included (WiSE-FT); tensors equal on both sides (buffers such as
    the -inf attention mask) are taken as they are. Integer and boolean buffers (BatchNorm's
    num_batches_tracked) have no weighted mean: they come from the nearer end (A below 0.5)."""
    out = {}
    for key, ta in a.items():
        tb = b[key]
        if torch.equal(ta, tb):
            out[key] = ta.clone()
        elif not ta.is_floating_point():
            out[key] = (ta if alpha < 0.5 else tb).clone()
        else:
            out[key] = torch.lerp(ta, tb.to(ta.dtype), alpha)
    return out


def alpha_label(alpha: float) -> str:
    return f"alpha-{alpha:g}"


def run_interpolation(
    models: Sequence[ModelArg],
    alphas: Sequence[float],
    section: dict[str, Any],
    protocol: Any,
    run_dir: Path,
    device: Any,
) -> dict[str, Any]:
    """Evaluate every blend (results under run_dir/eval, reused when the weights and protocol
    match); returns the document written to interpolation.json."""

    start = time.time()
    if getattr(protocol, "evaluate_with", None) is not None:
        raise ClipxUsageError(
            f"protocol '{protocol.name}' is not per-sample classification; interpolate needs one"
        )
    a, b = models
    loaded_a, loaded_b = load(a, device), load(b, device)
    state_a = {k: v.detach().clone() for k, v in loaded_a.model.state_dict().items()}
    state_b = {k: v.detach() for k, v in loaded_b.model.state_dict().items()}
    check_same_architecture(state_a, state_b, (a.label, b.label))
    ends = {"a": (a, loaded_a), "b": (b, loaded_b)}
    doc: dict[str, Any] = {
        "kind": "interpolation",
        "formula": "theta(alpha) = (1 - alpha) * theta_A + alpha * theta_B (every floating "
        "weight and running statistic; integer buffers from A for alpha < 0.5, else from B)",
        **{
            side: {
                "label": m.label,
                "model": m.spec,
                "arch": loaded.arch,
                "fingerprint": model_fingerprint(loaded.model),
            }
            for side, (m, loaded) in ends.items()
        },
        "alphas": list(alphas),
    }
    del loaded_b
    mix = loaded_a  # A's module, its weights replaced by each blend in turn
    points = []
    for alpha in alphas:
        mix.model.load_state_dict(blend_state(state_a, state_b, alpha))
        mix.model.eval()
        label = alpha_label(alpha)
        for rec in evaluate(mix, protocol, run_dir, label):
            points.append(
                {
                    "alpha": alpha,
                    "label": label,
                    "fingerprint": rec["model"]["fingerprint"],
                    "dataset": rec["dataset_key"],
                    "eps": rec["eps"],
                    "eps_str": rec["eps_str"],
                    "n": rec["n"],
                    "clean_acc": rec["clean_acc"],
                    "robust_acc": rec["robust_acc"],
                    "per_attack": rec["per_attack"],
                }
            )
    doc["points"] = points
    doc.update(provenance(section, protocol))
    doc["elapsed_s"] = round(time.time() - start, 3)
    return doc
