"""Getting the evaluation suite onto disk (`clipx data ...`): torchvision downloads, the layouts
of archives a user must fetch by hand, and what is present.

Downloads are switched on for a whole run by `allow_downloads()` (the `--download` switch of
`clipx eval` / `clipx recipe run`): every suite dataset built inside it is constructed with
download=True, whatever its own spec says, without changing the recipe or result hashes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import zipfile
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

from ..errors import ClipxError, ClipxUsageError
from .paths import data_root

_DOWNLOAD: ContextVar[bool] = ContextVar("clipx_download", default=False)

# suite datasets torchvision cannot fetch -> (`clipx data prepare` target, what to fetch by hand)
MANUAL = {
    "tinyimagenet": (
        "tiny-imagenet",
        "tiny-imagenet-200.zip from http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    ),
    "imagenet": (
        "imagenet-val",
        "ILSVRC2012_devkit_t12.tar.gz and ILSVRC2012_img_val.tar from https://image-net.org",
    ),
    "stanford_cars": (
        "",
        "torchvision's URL is dead: place the Kaggle copy + devkit under <root>/stanford_cars",
    ),
}
TINY = "tiny-imagenet-200"


@contextlib.contextmanager
def allow_downloads(enabled: bool = True) -> Iterator[None]:
    """Within: every suite dataset is built with download=True (torchvision's progress bar)."""
    token = _DOWNLOAD.set(enabled or _DOWNLOAD.get())
    try:
        yield
    finally:
        _DOWNLOAD.reset(token)


def downloads_allowed() -> bool:
    return _DOWNLOAD.get()


def _root_flag(root: Path) -> str:
    return "" if root == data_root(None) else f" --root {root}"


def fix_command(name: str, root: Path) -> str:
    """The one command that puts dataset `name` where the loader reads it."""
    if name in MANUAL:
        target, fetch = MANUAL[name]
        if not target:
            return fetch
        args = "tiny-imagenet-200.zip" if name == "tinyimagenet" else "DEVKIT_TAR VAL_TAR"
        return f"fetch {fetch}, then: clipx data prepare {target} {args}{_root_flag(root)}"
    return f"clipx data download {name}{_root_flag(root)} (or add --download to clipx eval / recipe run)"


# ------------------------------------------------------------------------------ Tiny-ImageNet


def _first_name(words: str) -> str:
    return words.split(",")[0].strip()


def prepare_tiny_imagenet(source: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """tiny-imagenet-200.zip (as distributed) or its extracted folder -> <root>/tiny-imagenet-200/
    with val_folders/<wnid>/<image> (from val/val_annotations.txt), train_folders/<wnid>/<image>
    (from train/<wnid>/images/) and classnames.txt (words.txt's first name per sorted wnid)."""
    source, out = Path(source).expanduser(), data_root(root) / TINY
    if not source.exists():
        raise ClipxUsageError(
            f"tiny-imagenet: {source} not found (the zip or its extracted folder)"
        )
    with _Archive(source) as arc:
        annotations = arc.text("val/val_annotations.txt")
        if annotations is None:
            raise ClipxUsageError(
                f"tiny-imagenet: {source} has no {TINY}/val/val_annotations.txt (not Tiny-ImageNet?)"
            )
        val = {}
        for line in annotations.splitlines():
            parts = line.split("\t")
            if len(parts) >= 2:
                val[f"val/images/{parts[0]}"] = parts[1]
        train = {}
        for name in arc.names("train/"):
            parts = name.split("/")  # train/<wnid>/images/<file>
            if len(parts) == 4 and parts[2] == "images" and parts[3]:
                train[name] = parts[1]
        out.mkdir(parents=True, exist_ok=True)
        _write_folders(arc, val, out / "val_folders")
        if train:
            _write_folders(arc, train, out / "train_folders")
        wnids = sorted(set(val.values()) | set(train.values()))
        words = dict(
            line.split("\t", 1)
            for line in (arc.text("words.txt") or "").splitlines()
            if "\t" in line
        )
        if words:
            names = [_first_name(words.get(w, w)) for w in wnids]
            (out / "classnames.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    return out


def _write_folders(arc: _Archive, files: dict[str, str], dest: Path) -> None:
    """member -> class folder, written into dest.partial and renamed: never half a layout."""
    from tqdm import tqdm

    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    missing = 0
    for member, wnid in tqdm(sorted(files.items()), desc=dest.name, unit="img", leave=False):
        data = arc.read(member)
        if data is None:
            missing += 1
            continue
        (partial / wnid).mkdir(parents=True, exist_ok=True)
        (partial / wnid / Path(member).name).write_bytes(data)
    if missing:
        shutil.rmtree(partial, ignore_errors=True)
        raise ClipxError(f"tiny-imagenet: {missing} of {len(files)} listed images are missing")
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)


class _Archive:
    """Members of tiny-imagenet-200/ in a zip or an extracted folder, by path below it."""

    def __init__(self, source: Path):
        self.source = source
        self.zip: zipfile.ZipFile | None = None
        self.base = source

    def __enter__(self) -> _Archive:
        if self.source.is_file():
            try:
                self.zip = zipfile.ZipFile(self.source)
            except zipfile.BadZipFile:
                raise ClipxUsageError(f"tiny-imagenet: {self.source} is not a zip file") from None
            top = {n.split("/", 1)[0] for n in self.zip.namelist()}
            self.prefix = f"{TINY}/" if TINY in top else ""
        else:
            self.base = self.source / TINY if (self.source / TINY).is_dir() else self.source
        return self

    def __exit__(self, *exc) -> None:
        if self.zip is not None:
            self.zip.close()

    def names(self, under: str) -> list[str]:
        if self.zip is not None:
            n = len(self.prefix)
            return [m[n:] for m in self.zip.namelist() if m.startswith(self.prefix + under)]
        return [p.relative_to(self.base).as_posix() for p in (self.base / under).rglob("*")]

    def read(self, member: str) -> bytes | None:
        if self.zip is not None:
            try:
                return self.zip.read(self.prefix + member)
            except KeyError:
                return None
        path = self.base / member
        return path.read_bytes() if path.is_file() else None

    def text(self, member: str) -> str | None:
        data = self.read(member)
        return None if data is None else data.decode("utf-8")


# ----------------------------------------------------------------------------------- ImageNet


def prepare_imagenet_val(
    devkit: str | os.PathLike, val_tar: str | os.PathLike, root: str | os.PathLike | None = None
) -> Path:
    """ILSVRC2012 devkit + validation tar -> <root>/imagenet/val/<wnid>/ via torchvision's own
    archive parser (checksums included); the archives are linked, not copied."""
    import torchvision.datasets as tvd
    from torchvision.datasets.imagenet import ARCHIVE_META

    out = data_root(root) / "imagenet"
    out.mkdir(parents=True, exist_ok=True)
    for given, key in ((devkit, "devkit"), (val_tar, "val")):
        given = Path(given).expanduser().resolve()
        if not given.is_file():
            raise ClipxUsageError(f"imagenet-val: {given} not found")
        link = out / ARCHIVE_META[key][0]
        if not link.exists():
            link.symlink_to(given)
    try:
        tvd.ImageNet(out, split="val")
    except (RuntimeError, OSError) as exc:
        raise ClipxError(f"imagenet-val: {str(exc).splitlines()[0]}") from None
    return out / "val"
