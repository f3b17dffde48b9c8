"""The run directory: the names every floor agrees on.

Run directory layout:
    recipe.resolved.json / .toml   the exact recipe (profile and --set applied)
    versions.json, seed            package and plugin versions, the seed
    run.lock                       held while running; a second run on the same dir is refused
    components.json                label -> the model source and defenses (with their plugins)
    pretrain/ <label>/             per trained model: checkpoint.pt (resume), final.pt (open_clip
                                   format), metrics.jsonl, done.json once finished
    eval/                          the evaluation engine's per-dataset records (resumable)
    cards/                         one result card per evaluated model
    results.json / .md / .csv      all records and the human tables
    seed-<s>/                      one such directory per seed of a multi-seed recipe
Re-running the same resolved recipe recomputes nothing that finished; after a crash, --resume
continues training from the last checkpoint and evaluation from the last finished dataset.
"""

from __future__ import annotations

LOCK_NAME = "run.lock"
COMPONENTS_NAME = "components.json"
START_LABEL = "clip"  # the start model's label (the source's weights, or the pretrain stage's)
