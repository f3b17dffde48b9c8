"""Image-folder and tar-of-JPEGs sources (`<split>/<class>/<file>.jpg`), e.g. the CIFAR-10 tars.

The tar source keeps the compressed bytes in memory (3 MB for CIFAR-10 test) and decodes an
image only when it is read, so a 10,000-image evaluation streams instead of holding tensors."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from ..errors import ClipxUsageError
from .imageio import open_rgb, to_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def clean_classname(name: str) -> str:
    """Folder / torchvision names -> words for prompts (TeCoA's refine_classname)."""
    return name.replace("_", " ").replace("-", " ").strip().lower()


def _to_tensor(img: Image.Image, size: int | None, where: str = "image") -> torch.Tensor:
    img = to_rgb(img, where)
    if size is not None and img.size != (size, size):
        from torchvision.transforms.functional import center_crop, resize

        img = center_crop(resize(img, size), size)
    return pil_to_tensor(img).float().div_(255)


class TarImageFolder(Dataset):
    """Images from a tar archive laid out as `<split>/<class>/<name>`; labels in sorted class order."""

    def __init__(self, path: str | os.PathLike, split: str, image_size: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise ClipxUsageError(f"dataset archive not found: {path}")
        self.path, self.split, self.image_size = path, split, image_size
        members: list[tuple[str, str, bytes]] = []
        with tarfile.open(path) as tar:
            for m in tar:
                parts = Path(m.name).parts
                if (
                    m.isfile()
                    and len(parts) >= 3
                    and parts[-3] == split
                    and m.name.lower().endswith(IMAGE_SUFFIXES)
                ):
                    members.append((parts[-2], m.name, tar.extractfile(m).read()))
        if not members:
            raise ClipxUsageError(f"{path}: no images under '{split}/<class>/' in the archive")
        folders = sorted({c for c, _, _ in members})
        self.folders = folders
        self.classnames = [clean_classname(c) for c in folders]
        index = {c: i for i, c in enumerate(folders)}
        members.sort(key=lambda cm: cm[0])  # stable: keeps archive order within a class
        self._blobs = [b for _, _, b in members]
        self._names = [n for _, n, _ in members]
        self.targets = [index[c] for c, _, _ in members]

    def __len__(self) -> int:
        return len(self._blobs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = open_rgb(self._blobs[i], f"{self.path}: member {self._names[i]}")
        return _to_tensor(img, self.image_size), self.targets[i]


def read_classnames(
    source: str | os.PathLike | list[str], folders: list[str], where: str = "classnames"
) -> list[str]:
    """Class names for `folders` (sorted class-folder order): a list, or a text file with one
    name per line (blank lines and '#' comments skipped). A count mismatch is an error."""
    if isinstance(source, (list, tuple)):
        names, origin = [str(n).strip() for n in source], "the list"
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ClipxUsageError(f"{where}: class-name file not found: {path}")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ClipxUsageError(f"{where}: cannot read class-name file {path}: {exc}") from None
        names = [x.strip() for x in lines if x.strip() and not x.strip().startswith("#")]
        origin = str(path)
    if len(names) != len(folders) or not all(names):
        shown = ", ".join(folders[:5]) + (" ..." if len(folders) > 5 else "")
        raise ClipxUsageError(
            f"{where}: {origin} has {len(names)} class names but the dataset has {len(folders)} "
            f"class folders ({shown}); give one name per folder, in sorted folder order"
        )
    return names


class ImageFolderDataset(Dataset):
    """A folder laid out as `<root>/<class>/<image>`; labels in sorted class order. `classnames`
    (a list, or a file with one name per line in sorted folder order) renames the classes."""

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int | None = None,
        classnames: str | os.PathLike | list[str] | None = None,
    ):
        root = Path(root)
        if not root.is_dir():
            raise ClipxUsageError(f"dataset directory not found: {root}")
        self.folders = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not self.folders:
            raise ClipxUsageError(f"{root}: no <class>/ folders (expected <root>/<class>/<image>)")
        if classnames is not None:
            self.classnames = read_classnames(classnames, self.folders)
        else:
            self.classnames = [clean_classname(c) for c in self.folders]
        self.files: list[Path] = []
        self.targets: list[int] = []
        for label, folder in enumerate(self.folders):
            for f in sorted((root / folder).iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    self.files.append(f)
                    self.targets.append(label)
        if not self.files:
            raise ClipxUsageError(f"{root}: no images found under <class>/ folders")
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = open_rgb(self.files[i])
        return _to_tensor(img, self.image_size, str(self.files[i])), self.targets[i]


def image_to_tensor(img: Image.Image, size: int | None = None, where: str = "") -> torch.Tensor:
    """A PIL image as float (3, H, W) in [0, 1], resized to `size` if given: how every image
    folder of clipx reads an image (also the caption galleries); `where` names it in errors."""
    return _to_tensor(img, size, where or "image")
