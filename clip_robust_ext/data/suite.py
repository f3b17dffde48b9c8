"""The zero-shot evaluation suite through torchvision (no patched site-packages).

Each entry knows how to build the torchvision dataset for a split, where its class names are,
and the image size used in the TeCoA lineage (CIFAR/STL at native resolution; others
Resize+CenterCrop 224, eps is measured at that resolution). Datasets torchvision cannot fetch
(Tiny-ImageNet, ImageNet, StanfordCars) are fetched by hand and laid out by `clipx data prepare`
(data/manage.py); a missing dataset's error names the command that fixes it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torchvision.datasets as tvd
import torchvision.transforms as T
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from ..errors import ClipxError, ClipxUsageError, unknown_name
from .folders import ImageFolderDataset, clean_classname
from .manage import MANUAL, downloads_allowed, fix_command
from .paths import data_root
from .splits import CIFAR10_SPLITS


@dataclass(frozen=True)
class SuiteEntry:
    name: str
    build: Callable[[Path, str, Callable, bool], object]
    image_size: int | None  # None: native resolution
    classnames: Callable[[object], list[str]] | None = None
    note: str = ""


def _classes(ds) -> list[str]:
    return [clean_classname(c) for c in ds.classes]


def _split_train(split: str) -> bool:
    return split == "train"


_SUITE: dict[str, SuiteEntry] = {
    "cifar10": SuiteEntry(
        "cifar10",
        lambda r, s, t, d: tvd.CIFAR10(r, train=_split_train(s), transform=t, download=d),
        None,
        _classes,
    ),
    "cifar100": SuiteEntry(
        "cifar100",
        lambda r, s, t, d: tvd.CIFAR100(r, train=_split_train(s), transform=t, download=d),
        None,
        _classes,
    ),
    "stl10": SuiteEntry(
        "stl10", lambda r, s, t, d: tvd.STL10(r, split=s, transform=t, download=d), None, _classes
    ),
    "caltech101": SuiteEntry(
        "caltech101",
        lambda r, s, t, d: tvd.Caltech101(
            r, transform=T.Compose([T.Lambda(lambda im: im.convert("RGB")), t]), download=d
        ),
        224,
        lambda ds: [clean_classname(c) for c in ds.categories],
    ),
    "caltech256": SuiteEntry(
        "caltech256",
        lambda r, s, t, d: tvd.Caltech256(
            r, transform=T.Compose([T.Lambda(lambda im: im.convert("RGB")), t]), download=d
        ),
        224,
        lambda ds: [clean_classname(c.split(".", 1)[-1]) for c in ds.categories],
    ),
    "oxfordpets": SuiteEntry(
        "oxfordpets",
        lambda r, s, t, d: tvd.OxfordIIITPet(
            r, split="test" if s == "test" else "trainval", transform=t, download=d
        ),
        224,
        _classes,
    ),
    "flowers102": SuiteEntry(
        "flowers102",
        lambda r, s, t, d: tvd.Flowers102(r, split=s, transform=t, download=d),
        224,
        _classes,
    ),
    "dtd": SuiteEntry(
        "dtd", lambda r, s, t, d: tvd.DTD(r, split=s, transform=t, download=d), 224, _classes
    ),
    "eurosat": SuiteEntry(
        "eurosat", lambda r, s, t, d: tvd.EuroSAT(r, transform=t, download=d), 224, _classes
    ),
    "fgvc_aircraft": SuiteEntry(
        "fgvc_aircraft",
        lambda r, s, t, d: tvd.FGVCAircraft(r, split=s, transform=t, download=d),
        224,
        _classes,
    ),
    "food101": SuiteEntry(
        "food101",
        lambda r, s, t, d: tvd.Food101(r, split=s, transform=t, download=d),
        224,
        _classes,
    ),
    "sun397": SuiteEntry(
        "sun397",
        lambda r, s, t, d: tvd.SUN397(r, transform=t, download=d),
        224,
        _classes,
        "manual download may be needed",
    ),
    "country211": SuiteEntry(
        "country211",
        lambda r, s, t, d: tvd.Country211(r, split=s, transform=t, download=d),
        224,
        _classes,
    ),
    "stanford_cars": SuiteEntry(
        "stanford_cars",
        lambda r, s, t, d: tvd.StanfordCars(r, split=s, transform=t, download=False),
        224,
        _classes,
        "torchvision's URL is dead: place the Kaggle copy + devkit under <root>/stanford_cars",
    ),
    "pcam": SuiteEntry(
        "pcam",
        lambda r, s, t, d: tvd.PCAM(r, split=s, transform=t, download=d),
        224,
        lambda ds: ["lymph node", "lymph node containing metastatic tumor tissue"],
    ),
    "imagenet": SuiteEntry(
        "imagenet",
        lambda r, s, t, d: tvd.ImageNet(
            r / "imagenet", split="val" if s == "test" else s, transform=t
        ),
        224,
        lambda ds: list(IMAGENET_CLASSNAMES),
        "manual download: ILSVRC2012 tars under <root>/imagenet",
    ),
    "tinyimagenet": SuiteEntry(
        "tinyimagenet",
        lambda r, s, t, d: _tiny_imagenet(r / "tiny-imagenet-200", s),
        None,
        None,
        "manual download: `clipx data prepare tiny-imagenet tiny-imagenet-200.zip`",
    ),
}


def _tiny_imagenet(base: Path, split: str) -> ImageFolderDataset:
    """`clipx data prepare tiny-imagenet`'s layout: val_folders/ (test), train_folders/ (else
    a hand-made train/<wnid>/<image>), named by classnames.txt when present (else wnids)."""
    folder = base / ("val_folders" if split == "test" else "train_folders")
    if split != "test" and not folder.is_dir() and (base / "train").is_dir():
        folder = base / "train"
    if not folder.is_dir():
        raise FileNotFoundError(f"no {folder}")
    names = base / "classnames.txt"
    return ImageFolderDataset(folder, classnames=names if names.is_file() else None)


# The TeCoA/TGA-ZSR/SAFT 16-dataset suite (ANCHORS.md A1).
TECOA_16 = (
    "tinyimagenet",
    "cifar10",
    "cifar100",
    "stl10",
    "food101",
    "oxfordpets",
    "flowers102",
    "dtd",
    "eurosat",
    "fgvc_aircraft",
    "caltech101",
    "caltech256",
    "stanford_cars",
    "pcam",
    "imagenet",
    "sun397",
)


def suite_names() -> list[str]:
    """Names of the zero-shot suite's torchvision datasets (`clipx data list`)."""
    return list(_SUITE)


def suite_entry(name: str) -> SuiteEntry:
    if name not in _SUITE:
        raise unknown_name("dataset", name, _SUITE)
    return _SUITE[name]


def load_suite_dataset(
    name: str, root: str | os.PathLike | None = None, split: str = "test", download: bool = False
):
    """A torchvision dataset returning ([0,1] tensor, label) with cleaned `classnames`."""
    entry = suite_entry(name)
    root = data_root(root)
    size = entry.image_size
    transform = (
        T.ToTensor()
        if size is None
        else T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor()])
    )
    download = download or downloads_allowed()
    try:
        ds = entry.build(root, split, transform, download)
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        if download and name not in MANUAL:
            raise ClipxError(
                f"dataset '{name}': download into {root} failed: {str(exc).splitlines()[0]}"
            ) from None
        raise ClipxUsageError(
            f"dataset '{name}' ({split}) not found under {root}; to fix: {fix_command(name, root)}"
            f" [{str(exc).splitlines()[0]}]"
        ) from None
    if not hasattr(ds, "classnames"):
        ds.classnames = entry.classnames(ds) if entry.classnames else _classes(ds)
    if name == "cifar10":
        ds.class_splits = CIFAR10_SPLITS  # the zero-shot seen / unseen 5/5 split
    return ds
