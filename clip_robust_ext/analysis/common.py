"""What the analysis commands share: naming and loading models as `clipx eval` does, and the
provenance block (protocol, seed, versions) written into every analysis JSON."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ClipxUsageError
from ..evaluation.records import now
from ..recipes import Registries, model_section
from ..run.builders import build_model
from ..run.evaluate import eval_label, eval_model_spec
from ..utils.versions import versions


@dataclass
class ModelArg:
    """One model of an analysis command: its label and its validated [model] table."""

    label: str
    spec: dict[str, Any]


def resolve_models(
    args: tuple[str, ...] | list[str], arch: str | None, labels: tuple[str, ...] = ()
) -> list[ModelArg]:
    """Model arguments named as `clipx eval --model` takes them. A checkpoint file is loaded into
    --arch when given, else into the first argument that is not a file (`clipx interpolate
    clipx-small-c10 runs/tecoa-cifar10/tecoa/final.pt`: the fine-tuned weights, same model)."""

    if labels and len(labels) != len(args):
        raise ClipxUsageError(f"--label: give one per model ({len(args)}), got {len(labels)}")
    is_file = [Path(a).expanduser().is_file() for a in args]
    base = next((a for a, f in zip(args, is_file) if not f), None)
    reg = Registries()
    out: list[ModelArg] = []
    for i, (arg, file) in enumerate(zip(args, is_file)):
        if file and arch is None:
            if base is None:
                raise ClipxUsageError(
                    f"{arg}: a checkpoint file needs --arch (or a model name among the "
                    "arguments to load it into)"
                )
            raw, default = eval_model_spec(base, checkpoint=arg)
        elif file:
            raw, default = eval_model_spec(arg, arch=arch)
        else:
            raw, default = eval_model_spec(arg)
        label = eval_label(labels[i] if labels else None, default, "--label")
        out.append(ModelArg(label, model_section(raw, reg)))
    names = [m.label for m in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ClipxUsageError(f"models {twice} appear twice; give each a distinct --label")
    return out


def load(model: ModelArg, device: Any) -> Any:
    """The LoadedCLIP of `model` in eval mode (seeded, as `clipx eval` builds it)."""

    loaded = build_model(model.spec, device, seed=0)
    loaded.model.eval()
    return loaded


def provenance(section: dict[str, Any], protocol: Any) -> dict[str, Any]:
    """The protocol (as requested and resolved), its seed and the versions behind a result."""

    return {
        "protocol": protocol.name,
        "evaluate": section,
        "protocol_params": protocol.to_dict(),
        "seed": protocol.seed,
        "versions": versions(),
        "computed_at": now(),
    }
