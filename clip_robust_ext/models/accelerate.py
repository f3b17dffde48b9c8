"""Speed options for the image tower: channels_last memory format and torch.compile.

Both are off by default and opt-in per evaluation (`Protocol.channels_last`, `Protocol.compile`):
they select other kernels, so logits (and hence adversarial examples) are not bitwise those of
eager fp32, and a result must say which were on (the protocol stores them). What they buy is
measured by `python -m benchmarks.run --only options`.

- channels_last helps convolutional image towers (ModifiedResNet, ConvNeXt); a ViT only has its
  patch-embedding convolution, so expect nothing there.
- torch.compile compiles `encode_image` (forward and, through AOTAutograd, the backward the attacks
  take w.r.t. the input). On CPU it needs a C++ compiler; the first call per input shape pays the
  compilation, so it pays off on long evaluations (PGD-100 on full test sets), not on a few batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch

from ..errors import ClipxUsageError
from .clip import LoadedCLIP


def _compiler_available() -> bool:
    import shutil

    return any(shutil.which(cc) for cc in ("c++", "g++", "clang++"))


@contextlib.contextmanager
def accelerated(
    loaded: LoadedCLIP, channels_last: bool = False, compile: bool = False
) -> Iterator[LoadedCLIP]:
    """A view of `loaded` whose ZeroShotClassifiers encode images with the options on.

    The CLIP is shared, not copied: channels_last converts the image tower's weights in place and
    converts them back on exit (values unchanged, only the layout), so training that follows gets
    the layout it had."""
    if not (channels_last or compile):
        yield loaded
        return
    if (
        compile
        and next(loaded.model.parameters()).device.type == "cpu"
        and not _compiler_available()
    ):
        raise ClipxUsageError(
            "compile = true needs a C++ compiler on CPU (torch.compile's inductor); none found"
        )
    visual = loaded.model.visual
    if channels_last:
        visual.to(memory_format=torch.channels_last)
    encoder = torch.compile(loaded.model.encode_image) if compile else None
    try:
        yield dataclasses.replace(loaded, channels_last=channels_last, image_encoder=encoder)
    finally:
        if channels_last:
            visual.to(memory_format=torch.contiguous_format)
