"""Prompt template sets. The template is part of the protocol and is stored with results."""

from __future__ import annotations

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

TECOA = ("This is a photo of a {}",)

# CIFAR-10's class names in label order (torchvision's CIFAR10.classes; the JPEG tars' folders)
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _as_format(fns) -> tuple[str, ...]:
    # open_clip stores templates as lambdas c -> str; turn them back into '{}' strings
    return tuple(fn("{}") for fn in fns)


TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "tecoa": TECOA,
    "openai-imagenet": _as_format(OPENAI_IMAGENET_TEMPLATES),
    "simple-imagenet": _as_format(SIMPLE_IMAGENET_TEMPLATES),
    "shapes": (
        "a photo of a {}.",
        "This is a photo of a {}",
        "a picture of a {}.",
        "a drawing of a {}.",
        "a {} shape.",
    ),
}
