"""One Trainer engine; defenses only supply a per-batch loss."""

from .checkpoint import export_open_clip, load_checkpoint
from .config import TrainConfig
from .defense import Batch, Defense, TrainContext
from .losses import clip_contrastive_loss
from .trainer import evaluation_callback, train

__all__ = [
    "Batch",
    "Defense",
    "TrainConfig",
    "TrainContext",
    "clip_contrastive_loss",
    "evaluation_callback",
    "export_open_clip",
    "load_checkpoint",
    "train",
]
