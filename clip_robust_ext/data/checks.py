"""What a dataset must return: (image, label) with image a float (3, H, W) tensor in [0, 1].

Checked when batches are formed (training and evaluation), so a dataset that yields uint8
pixels, grey-scale or mixed-size images is a usage error naming the dataset and the sample,
not a silent rescale or a traceback from deep inside the model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ClipxUsageError


def check_image(image: Any, what: str = "dataset", index: int | None = None) -> None:
    """Raise ClipxUsageError unless `image` is a finite float (3, H, W) tensor in [0, 1]."""
    at = f" (sample {index})" if index is not None else ""
    if not isinstance(image, torch.Tensor):
        raise ClipxUsageError(
            f"{what}: returned a {type(image).__name__} image{at}; expected a float tensor "
            "(3, H, W) in [0, 1]"
        )
    if image.ndim != 3 or image.shape[0] != 3:
        raise ClipxUsageError(
            f"{what}: returned an image of shape {tuple(image.shape)}{at}; expected (3, H, W) "
            "RGB (convert grey-scale or RGBA images to RGB)"
        )
    if not image.is_floating_point():
        raise ClipxUsageError(
            f"{what}: returned {str(image.dtype).replace('torch.', '')} pixels{at}; expected "
            "float in [0, 1] (divide 8-bit pixels by 255)"
        )
    if image.numel():
        lo, hi = float(image.min()), float(image.max())
        if not (0.0 <= lo and hi <= 1.0):  # NaN fails both comparisons
            raise ClipxUsageError(
                f"{what}: image values{at} span [{lo:.4g}, {hi:.4g}]; expected [0, 1]"
            )


def stack_images(
    images: Sequence[Any], what: str = "dataset", indices: Sequence[int] | None = None
) -> torch.Tensor:
    """Check every image and stack them (float32); mixed sizes are named, not a stack error."""
    for j, image in enumerate(images):
        check_image(image, what, None if indices is None else int(indices[j]))
    shapes = sorted({tuple(im.shape) for im in images})
    if len(shapes) > 1:
        raise ClipxUsageError(
            f"{what}: images of different sizes in one batch ({shapes[0]} and {shapes[-1]}); "
            "set the dataset's image_size so they are resized to one size"
        )
    return torch.stack(list(images)).float()


def collate_labelled(items: Sequence[Sequence[Any]], what: str = "dataset") -> tuple:
    """DataLoader collate for (image, label, ...) items: checked images, integer labels."""
    images = [item[0] for item in items]
    labels = torch.as_tensor([int(item[1]) for item in items], dtype=torch.long)
    return stack_images(images, what), labels
