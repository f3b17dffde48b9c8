"""Devices: a user's device string -> torch.device, and the device a model's weights are on."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ClipxUsageError


def resolve_device(spec: str) -> torch.device:
    """ "auto" (CUDA when available, else CPU) or a torch device string; CUDA must be present."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ClipxUsageError(f"device {spec!r} requested but CUDA is not available here")
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); CPU for a module with neither."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")
