"""`clipx export RUN_DIR/MODEL --hub-folder DIR`: a trained model as an open_clip hub folder.

The folder is what `open_clip.create_model_and_transforms('local-dir:DIR')` (and, once uploaded,
'hf-hub:ORG/NAME') loads as is: open_clip_config.json (model and preprocessing config) and
open_clip_model.safetensors, plus a README.md model card with the run's evaluation results, the
protocol and the package versions.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .data.splits import subset_tag
from .errors import ClipxUsageError
from .models import (
    load_clip,
    load_into_clip,
    read_state_dict,
    register_model_config,
    save_open_clip_checkpoint,
)
from .models.hub import CONFIG_NAME as HUB_CONFIG
from .models.hub import has_schema
from .params import is_eps_like
from .run.builders import build_model
from .training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from .utils.eps import format_eps
from .utils.io import atomic_write_text

CONFIG_NAME = "open_clip_config.json"
ADAPTER_DIR = "adapter"  # training/scope.py writes a LoRA / first-blocks adapter there
_LOAD_SNIPPET = (
    "import open_clip\n"
    "model, _, preprocess = open_clip.create_model_and_transforms('local-dir:THIS_FOLDER')\n"
    "# after upload: open_clip.create_model_and_transforms('hf-hub:ORG/NAME')"
)
WEIGHTS_NAME = "open_clip_model.safetensors"


def export_hub_folder(
    model_dir: str | os.PathLike, dest: str | os.PathLike, merge_adapter: bool = False
) -> Path:
    """Write the hub folder for the trained model in `model_dir` (a run dir's <label>/).

    A LoRA / first-blocks model (model_dir/adapter) is exported as its adapter folder (only what
    training changed; it loads onto the base it names), or with merge_adapter as a full open_clip
    folder whose weights have the adapter folded in (final.pt)."""
    model_dir, dest = Path(model_dir), Path(dest)
    final, run_dir = model_dir / "final.pt", model_dir.parent
    if not final.is_file():
        raise ClipxUsageError(f"{model_dir}: no final.pt - not a finished trained model of a run")
    if not (run_dir / "recipe.resolved.json").is_file():
        raise ClipxUsageError(f"{run_dir}: no recipe.resolved.json - not a clipx run directory")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ClipxUsageError(f"--hub-folder {dest}: exists and is not empty")
    doc = json.loads((run_dir / "recipe.resolved.json").read_text())
    if (model_dir / ADAPTER_DIR).is_dir() and not merge_adapter:
        return _export_adapter(model_dir, dest, doc)
    loaded = _trained_model(doc["model"], model_dir)
    config = {
        "model_cfg": _model_cfg(loaded),
        "preprocess_cfg": dict(getattr(loaded.model.visual, "preprocess_cfg", {}) or {}),
    }
    card = model_card(model_dir.name, loaded.arch, doc, run_dir)

    # written next to the destination, then moved in: a crash leaves no half folder behind
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        atomic_write_text(staging / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        save_open_clip_checkpoint(loaded.model, staging / WEIGHTS_NAME)
        atomic_write_text(staging / "README.md", card)
        if dest.exists():
            dest.rmdir()
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _export_adapter(model_dir: Path, dest: Path, doc: dict[str, Any]) -> Path:
    """The adapter folder (config + safetensors) with a model card, moved in whole."""
    from .models.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS

    config = json.loads((model_dir / ADAPTER_DIR / ADAPTER_CONFIG).read_text())
    card = model_card(model_dir.name, config["base"]["arch"], doc, model_dir.parent)
    card = card.replace(_LOAD_SNIPPET, _adapter_snippet(config))
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            shutil.copyfile(model_dir / ADAPTER_DIR / name, staging / name)
        (staging / "README.md").write_text(card)
        if dest.exists():
            dest.rmdir()
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _adapter_snippet(config: dict[str, Any]) -> str:
    base = config["base"]
    return "\n".join(
        [
            f"# a clipx {config['scope']} adapter ({config.get('trainable_params')} parameters); "
            f"it loads only onto its base, weights fingerprint {base['fingerprint']}",
            "from clip_robust_ext import load_clip",
            f"model = load_clip({base['arch']!r}, pretrained={base.get('pretrained')!r}, "
            "adapter='local-dir:THIS_FOLDER')",
        ]
    )


def _trained_model(spec: dict[str, Any], model_dir: Path):
    """The run's architecture with the trained weights (final.pt), built without downloading the
    start model's weights where the architecture alone is enough."""
    import open_clip

    arch = spec.get("arch")
    if arch is None and (model_dir / CHECKPOINT_NAME).is_file():
        arch = load_checkpoint(model_dir / CHECKPOINT_NAME).get("arch")
    if spec.get("config"):
        register_model_config(spec["config"])
    if arch and (arch in open_clip.list_models() or has_schema(arch)):
        loaded = load_clip(arch)
    else:  # a model source that registers its own architecture (e.g. clipx-small-c10)
        loaded = build_model({k: v for k, v in spec.items() if k != "checkpoint"})
    final = model_dir / "final.pt"
    load_into_clip(loaded.model, read_state_dict(final), str(final))
    return loaded


def _model_cfg(loaded) -> dict[str, Any]:
    import open_clip

    if has_schema(loaded.arch):
        folder = Path(loaded.info["folder"])
        return json.loads((folder / HUB_CONFIG).read_text())["model_cfg"]
    cfg = open_clip.get_model_config(loaded.arch)
    if cfg is None:
        raise ClipxUsageError(f"open_clip has no config for architecture '{loaded.arch}'")
    return cfg


def model_card(label: str, arch: str, doc: dict[str, Any], run_dir: Path) -> str:
    """A Hugging Face model card: the defense that trained THIS model (a baseline's own, not the
    recipe's main defense), its evaluation per view and attack, the package versions."""
    records = [r for r in _read_list(run_dir / "results.json") if r.get("label") == label]
    versions = _read_object(run_dir / "versions.json")
    method = trained_by(doc, label)
    recipe = doc.get("recipe", {})
    lines = [
        "---",
        "library_name: open_clip",
        "tags: [clip, zero-shot-image-classification, adversarial-robustness, clipx]",
        "---",
        f"# {label} ({arch})",
        "",
        f"Trained with clipx, recipe `{recipe.get('name', '?')}` (seed {recipe.get('seed', '?')}), "
        f"from `{json.dumps(doc.get('model', {}))}`.",
        "",
        "```python",
        _LOAD_SNIPPET,
        "```",
        "",
        "## Training",
        "",
        *_training_lines(method, doc),
        "## Evaluation",
        "",
        "Protocol:",
        "",
        "```json",
        json.dumps(_budgets_as_written(doc.get("evaluate", {})), indent=2, sort_keys=True),
        "```",
        "",
        *results_table(records),
        "",
        "## Versions",
        "",
        "```json",
        json.dumps(versions, indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


def trained_by(doc: dict[str, Any], label: str) -> dict[str, Any] | None:
    """The method of the resolved recipe that trained the model labelled `label`."""
    methods = [doc.get("pretrain"), doc.get("defense"), *doc.get("baselines", [])]
    return next((m for m in methods if m and m.get("label") == label), None)


def _training_lines(method: dict[str, Any] | None, doc: dict[str, Any]) -> list[str]:
    if method is None:
        return ["Not trained by this run (the run's start model).", ""]
    role = (
        "the recipe's defense"
        if method is doc.get("defense")
        else "pre-training"
        if method is doc.get("pretrain")
        else "a baseline of the recipe"
    )
    return [
        f"Defense: **{method['name']}** ({role}), on `{json.dumps(doc.get('data', {}))}`.",
        "",
        "```json",
        json.dumps(_budgets_as_written(method), indent=2, sort_keys=True),
        "```",
        "",
    ]


def _budgets_as_written(node: Any, key: str = "") -> Any:
    """Budgets as papers write them (4/255), not as floats (0.01568627450980392)."""
    if isinstance(node, dict):
        return {k: _budgets_as_written(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_budgets_as_written(v, key) for v in node]
    if isinstance(node, float) and is_eps_like(key):
        return format_eps(node)
    return node


def view_of(record: dict[str, Any]) -> str:
    """The evaluation view of a record: the class split or held-out part it was restricted to."""
    return subset_tag(record.get("dataset_params") or {}) or "all classes"


def results_table(records: list[dict[str, Any]]) -> list[str]:
    """One row per (dataset, view, eps): clean, the per-sample worst case, and every attack."""
    if not records:
        return ["No evaluation records for this model in the run."]
    attacks = list(dict.fromkeys(a for r in records for a in r.get("per_attack") or {}))
    head = ["protocol", "dataset", "split", "view", "n", "eps", "clean acc"]
    head.append("robust acc (worst case)")
    lines = [
        "Accuracy in percent; robust = correct under every attack (per-sample worst case).",
        "",
        "| " + " | ".join(head + attacks) + " |",
        "|" + "---|" * (len(head) + len(attacks)),
    ]
    for r in records:
        eps = r.get("eps_str") or (format_eps(r["eps"]) if r.get("eps") is not None else "-")
        cells = [r.get("protocol"), r.get("dataset"), r.get("split"), view_of(r), r.get("n"), eps]
        cells.append(r.get("clean_acc"))
        cells.append(r.get("robust_acc", "-"))
        cells += [(r.get("per_attack") or {}).get(a, "-") for a in attacks]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def _read_list(path: Path) -> list[Any]:
    data = _read_json(path)
    return data if isinstance(data, list) else []


def _read_object(path: Path) -> dict[str, Any]:
    data = _read_json(path)
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ClipxUsageError(f"{path}: cannot read ({exc})") from None
