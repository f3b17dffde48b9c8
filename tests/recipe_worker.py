"""`clipx` in its own process with a slow test dataset registered, for the kill -9 tests.

python tests/recipe_worker.py recipe run RECIPE.toml --run-dir DIR [--resume]

"slow-shapes" is procedural-shapes that sleeps `delay` seconds per image (outside every RNG
stream), so a test can SIGKILL the process between two evaluation datasets."""

from __future__ import annotations

import sys
import time

import torch

from clip_robust_ext import hookimpl
from clip_robust_ext.data import ProceduralShapes
from clip_robust_ext.plugin_manager import pm


class SlowShapes(ProceduralShapes):
    def __init__(self, split: str = "test", n: int = 16, seed: int = 0, delay: float = 0.05):
        super().__init__(split=split, n=n, seed=seed)
        self.delay = delay

    def __getitem__(self, index: int):
        time.sleep(self.delay)
        return super().__getitem__(index)


class SlowPlugin:
    @hookimpl
    def register_datasets(self, register):
        register("slow-shapes", SlowShapes, description="test: procedural shapes, slowly")


if __name__ == "__main__":
    torch.set_num_threads(1)
    pm.register(SlowPlugin(), name="recipe-worker")
    from clip_robust_ext.cli import main

    main(sys.argv[1:])
