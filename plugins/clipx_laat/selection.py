"""Which epoch's weights LAAT paper mode keeps (docs/FIDELITY.md#laat).

"last" (default): the weights after the last epoch; nothing is chosen by looking at test data.
"best-robust-on-test": the reference's train.py, which after every epoch measures adversarial
accuracy on one fixed set of episodes drawn once from the TEST split (its valloader is built on
testset with a fixed-batch sampler) and keeps the first epoch with the highest; the final episodes
then come from that same split, so its numbers are optimistic (paper.py selection_score).
Offered only to reproduce the published numbers, and named so that results say what was done."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

SELECTIONS = ("last", "best-robust-on-test")


class BestEpoch:
    """Keeps a copy of the module's weights whenever a score beats every earlier one (strictly,
    as the reference's `>`: a tie keeps the earlier epoch)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self._state: dict[str, Any] | None = None
        self.history: list[tuple[int, float]] = []

    def update(self, epoch: int, score: float) -> bool:
        self.history.append((epoch, float(score)))
        if self.best_score is not None and not score > self.best_score:
            return False
        self.best_score, self.best_epoch = float(score), epoch
        self._state = copy.deepcopy(self.module.state_dict())
        return True

    def restore(self) -> None:
        """Load the best weights back into the module (no-op before any update)."""
        if self._state is not None:
            self.module.load_state_dict(self._state)

    def summary(self) -> dict[str, Any]:
        return {
            "selection": "best-robust-on-test",
            "selected_epoch": self.best_epoch,
            "selected_robust_acc": self.best_score,
            "per_epoch_robust_acc": [s for _, s in self.history],
        }
