"""One Trainer engine; defenses only supply a per-batch loss."""

from .defense import Batch, Defense, TrainContext

__all__ = ["Batch", "Defense", "TrainContext"]
