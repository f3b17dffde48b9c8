"""Re-make the shipped start-model weights and their record (models/shipped.py) after a change
to the pre-training code or its defaults:

    python -m clip_robust_ext.training.ship

Pre-trains procedural-small here on one thread (ignoring the shipped weights), saves the result
as models/weights/procedural-small.safetensors and writes its record: the content key, the
weights' sha256 and the commit, packages and machine that made them. Commit both files and
update the fingerprint the README and tests/test_start_model.py name."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..evaluation.cards import weights_sha256
from ..models.checkpoints import save_open_clip_checkpoint
from ..models.shipped import WEIGHTS_DIR
from ..utils.provenance import machine, provenance_stamp
from .pretrain import PROCEDURAL_SMALL_DEFAULTS, ZERO_SHOT_TEMPLATES, procedural_small


def write_record(name: str, loaded: Any, meta: dict[str, Any], produced: dict[str, Any]) -> Path:
    """Save `loaded`'s weights as <name>.safetensors and its record (meta + fingerprint)."""
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    save_open_clip_checkpoint(loaded.model, WEIGHTS_DIR / f"{name}.safetensors")
    rec = {**meta, "weights_sha256": weights_sha256(loaded.model), "produced": produced}
    path = WEIGHTS_DIR / f"{name}.json"
    path.write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Pre-train procedural-small here (ignoring the shipped weights) and ship the result."""
    del argv
    loaded = procedural_small(rebuild=True, use_shipped=False)
    meta = {
        "name": "procedural-small",
        "key": loaded.info["cache_key"],
        "spec": dict(PROCEDURAL_SMALL_DEFAULTS),
        "zero_shot_test_accuracy": loaded.info["zero_shot_test_accuracy"],
        "zero_shot_templates": list(ZERO_SHOT_TEMPLATES),
    }
    how = (
        "clip_robust_ext.training.pretrain.procedural_small_path (offline pre-training, one thread)"
    )
    produced = {"how": how, **provenance_stamp(), "machine": machine()}
    path = write_record("procedural-small", loaded, meta, produced)
    print(f"wrote {path} and its weights", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
