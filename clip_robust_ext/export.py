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
from .run.builders import build_model
from .training.checkpoint import CHECKPOINT_NAME, load_checkpoint

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"


def export_hub_folder(model_dir: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Write the hub folder for the trained model in `model_dir` (a run dir's <label>/)."""
    model_dir, dest = Path(model_dir), Path(dest)
    final, run_dir = model_dir / "final.pt", model_dir.parent
    if not final.is_file():
        raise ClipxUsageError(f"{model_dir}: no final.pt - not a finished trained model of a run")
    if not (run_dir / "recipe.resolved.json").is_file():
        raise ClipxUsageError(f"{run_dir}: no recipe.resolved.json - not a clipx run directory")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ClipxUsageError(f"--hub-folder {dest}: exists and is not empty")
    doc = json.loads((run_dir / "recipe.resolved.json").read_text())
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
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        save_open_clip_checkpoint(loaded.model, staging / WEIGHTS_NAME)
        (staging / "README.md").write_text(card)
        if dest.exists():
            dest.rmdir()
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


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
    """A Hugging Face model card: what was trained, how it was evaluated, with what versions."""
    records = []
    if (run_dir / "results.json").is_file():
        records = [
            r for r in json.loads((run_dir / "results.json").read_text()) if r.get("label") == label
        ]
    versions = {}
    if (run_dir / "versions.json").is_file():
        versions = json.loads((run_dir / "versions.json").read_text())
    methods = [m for m in doc.get("methods", []) if m.get("label") == label]
    lines = [
        "---",
        "library_name: open_clip",
        "tags: [clip, zero-shot-image-classification, adversarial-robustness, clipx]",
        "---",
        f"# {label} ({arch})",
        "",
        f"Trained with clipx, recipe `{doc.get('recipe', {}).get('name', '?')}` "
        f"(seed {doc.get('recipe', {}).get('seed', '?')}), from `{json.dumps(doc.get('model', {}))}`.",
        "",
        "```python",
        "import open_clip",
        "model, _, preprocess = open_clip.create_model_and_transforms('local-dir:THIS_FOLDER')",
        "# after upload: open_clip.create_model_and_transforms('hf-hub:ORG/NAME')",
        "```",
        "",
        "## Training",
        "",
        "```json",
        json.dumps(methods[0] if methods else doc.get("defense", {}), indent=2, sort_keys=True),
        "```",
        "",
        "## Evaluation",
        "",
        "Protocol:",
        "",
        "```json",
        json.dumps(doc.get("evaluate", {}), indent=2, sort_keys=True),
        "```",
        "",
    ]
    if records:
        lines += ["| dataset | n | eps | clean acc | robust acc |", "|---|---|---|---|---|"]
        for r in records:
            lines.append(
                f"| {r.get('dataset')} | {r.get('n')} | {r.get('eps', '-')} | "
                f"{r.get('clean_acc')} | {r.get('robust_acc', '-')} |"
            )
    else:
        lines.append("No evaluation records for this model in the run.")
    lines += [
        "",
        "## Versions",
        "",
        "```json",
        json.dumps(versions, indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)
