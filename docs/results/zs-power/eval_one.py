"""Evaluate one model a `--profile power` run trained, in its own process and folder, under the
run's own protocol (same test images, attacks and seed): the models of one run evaluated side by
side instead of one after another (the engine runs them in sequence).

    python docs/results/zs-power/eval_one.py RUN_DIR/seed-0 LABEL OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from clip_robust_ext.evaluation import protocol_from_dict
from clip_robust_ext.evaluation.cards import weights_sha256
from clip_robust_ext.models.shipped import reference_sha256
from clip_robust_ext.run.builders import build_model, load_weights
from clip_robust_ext.run.records import evaluate_loaded
from clip_robust_ext.utils import provenance as P


def main(argv: list[str]) -> int:
    seed_dir, label, out = Path(argv[0]), argv[1], Path(argv[2])
    doc = json.loads((seed_dir / "recipe.resolved.json").read_text())
    protocol = protocol_from_dict(doc["evaluate"])
    start = build_model(doc["model"], "cpu", seed=doc["recipe"]["seed"])
    P.set_start_model(
        P.start_model_info(
            doc["model"]["source"], weights_sha256(start.model), reference_sha256(doc["model"])
        )
    )
    loaded = build_model(doc["model"], "cpu", seed=doc["recipe"]["seed"])
    ckpt = None if label == "clip" else seed_dir / label / "final.pt"
    if ckpt is not None:
        load_weights(loaded, ckpt)
    out.mkdir(parents=True, exist_ok=True)
    evaluate_loaded(loaded, protocol, out, label, spec=doc["model"], checkpoint=ckpt)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
