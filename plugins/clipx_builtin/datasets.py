"""Dataset sources: procedural shapes, CIFAR-10 JPEG tars, image folders, the torchvision suite."""

from __future__ import annotations

from functools import partial
from typing import Literal

from clip_robust_ext.api import (
    CIFAR10_SPLITS,
    ClipxUsageError,
    ImageFolderDataset,
    ProceduralShapes,
    TarImageFolder,
    assets_dir,
    load_suite_dataset,
    suite_names,
)


def procedural(
    split: Literal["train", "val", "test"] = "test",
    n: int | None = None,
    seed: int = 0,
    image_size: int = 32,
    root=None,
):
    return ProceduralShapes(split=split, n=n, seed=seed, image_size=image_size)


def cifar10_jpegs(
    split: str = "test", path: str | None = None, root=None, image_size: int | None = None
):
    """CIFAR-10 from `cifar10_<split>_jpegs.tar.gz` ($CLIPX_ASSETS, or `path` to the tar)."""
    if split not in ("train", "test"):
        raise ClipxUsageError(f"cifar10-jpegs: split must be 'train' or 'test', got {split!r}")
    tar = path or (assets_dir() / f"cifar10_{split}_jpegs.tar.gz")
    dataset = TarImageFolder(tar, split, image_size=image_size)
    dataset.class_splits = CIFAR10_SPLITS  # the zero-shot seen / unseen 5/5 split
    return dataset


def image_folder(
    root: str | None = None,
    split: str = "test",
    image_size: int | None = 224,
    classnames: str | list[str] | None = None,
):
    """<root>/<class>/<image>; classnames: a file with one name per line (sorted folder order)."""
    if root is None:
        raise ClipxUsageError("image-folder: set root to a folder of <class>/<image> files")
    return ImageFolderDataset(root, image_size=image_size, classnames=classnames)


def register_all(register) -> None:
    register(
        "procedural-shapes",
        procedural,
        description="seeded shapes x colours with texture and noise; needs nothing on disk",
    )
    register("cifar10-jpegs", cifar10_jpegs, description="CIFAR-10 JPEG tars from $CLIPX_ASSETS")
    register("image-folder", image_folder, description="<root>/<class>/<image> folders")
    for name in suite_names():
        register(name, partial(load_suite_dataset, name), description=f"torchvision {name}")
