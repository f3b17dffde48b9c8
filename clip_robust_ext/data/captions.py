"""Caption galleries for image-text retrieval: images with several captions each.

A gallery is scored as one retrieval problem (every image against every caption of the gallery).
Sources: COCO / Flickr30k Karpathy test splits from their JSON files and image folders (both the
original `dataset_coco.json` layout and ALBEF's `coco_test.json` list), and offline galleries for
tests and the default profile: procedural shapes where every image has a unique (colour, shape)
pair described by its captions, or CIFAR-10 JPEGs with one image per class."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ClipxUsageError
from .folders import image_to_tensor
from .imageio import open_rgb
from .procedural import COLOURS, SHAPES, ProceduralShapes
from .sampling import targets_of

SHAPE_CAPTIONS = (
    "a photo of a {colour} {shape}.",
    "a {colour} {shape} on a textured background.",
    "a drawing of a {colour} {shape}.",
    "a {colour} {shape}.",
    "a picture of a {colour} {shape}.",
)
CLASS_CAPTIONS = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "a picture of a {}.",
    "a blurry photo of a {}.",
    "a close-up photo of a {}.",
)


# Co-Attack's and SGA's caption cleaning (their dataset `pre_caption`): these characters are
# deleted, '-' and '/' become spaces, runs of two or more whitespace characters become one space
_DELETED = str.maketrans("", "", ",.'!?\"()*#:;~")
_SPACED = str.maketrans({"-": " ", "/": " "})
_WHITESPACE_RUN = re.compile(r"\s{2,}")
REFERENCE_MAX_WORDS = 30


def pre_caption(caption: str, max_words: int = REFERENCE_MAX_WORDS) -> str:
    """A caption as Co-Attack's and SGA's loaders feed it to every model and attack: lower-cased,
    punctuation deleted, '-' and '/' spaced, '<person>' -> 'person', whitespace runs collapsed,
    trailing newlines and surrounding spaces stripped, cut to `max_words` space-separated words.
    With their case-sensitive stop words this decides what is attackable ("A" -> "a")."""
    text = caption.lower().translate(_DELETED).translate(_SPACED).replace("<person>", "person")
    text = _WHITESPACE_RUN.sub(" ", text).rstrip("\n").strip(" ")
    return " ".join(text.split(" ")[:max_words])


@dataclass
class CaptionGallery:
    images: torch.Tensor  # (M, 3, H, W) in [0, 1]
    captions: list[list[str]]  # captions[i] belong to images[i]
    name: str = "gallery"

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.images) or any(not c for c in self.captions):
            raise ClipxUsageError(f"{self.name}: every image needs at least one caption")

    @property
    def texts(self) -> list[str]:
        return [t for caps in self.captions for t in caps]

    @property
    def text_owner(self) -> torch.Tensor:
        """(T,) index of the image each caption belongs to."""
        return torch.tensor([i for i, caps in enumerate(self.captions) for _ in caps])


def cleaned_gallery(
    gallery: CaptionGallery, max_words: int = REFERENCE_MAX_WORDS
) -> CaptionGallery:
    """The gallery with `pre_caption` applied to every caption (the images are shared)."""
    caps = [[pre_caption(c, max_words) for c in own] for own in gallery.captions]
    return CaptionGallery(gallery.images, caps, name=gallery.name)


def procedural_galleries(
    n_galleries: int = 2,
    gallery_size: int = 20,
    seed: int = 0,
    split: str = "test",
    n_captions: int = 5,
) -> list[CaptionGallery]:
    """Galleries whose images have distinct (colour, shape) pairs, so each caption names one image."""

    ds = ProceduralShapes(split=split, n=20_000, seed=seed)
    pairs = [(c, s) for s in range(len(SHAPES)) for c in COLOURS]
    g = torch.Generator().manual_seed(seed)
    found: dict[tuple[str, int], list[int]] = {}
    need = n_galleries
    for i in range(len(ds)):
        p = ds._params(i)
        key = (p["fg"], p["label"])
        if len(found.setdefault(key, [])) < need:
            found[key].append(i)
        if len(found) == len(pairs) and all(len(v) >= need for v in found.values()):
            break
    galleries = []
    for k in range(n_galleries):
        order = torch.randperm(len(pairs), generator=g)[:gallery_size].tolist()
        chosen = [pairs[j] for j in order]
        images = torch.stack([ds[found[pair][k]][0] for pair in chosen])
        captions = [
            [t.format(colour=c, shape=SHAPES[s]) for t in SHAPE_CAPTIONS[:n_captions]]
            for c, s in chosen
        ]
        galleries.append(CaptionGallery(images, captions, name=f"procedural-{k}"))
    return galleries


def class_galleries(
    dataset, n_galleries: int = 10, seed: int = 0, n_captions: int = 5
) -> list[CaptionGallery]:
    """One image per class per gallery, captioned by templates (e.g. the CIFAR-10 JPEGs)."""

    targets = targets_of(dataset)
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(t, []).append(i)
    picks = {
        c: [idx[j] for j in torch.randperm(len(idx), generator=g)[:n_galleries].tolist()]
        for c, idx in by_class.items()
    }
    names = dataset.classnames
    galleries = []
    for k in range(n_galleries):
        classes = [c for c in sorted(picks) if len(picks[c]) > k]
        images = torch.stack([dataset[picks[c][k]][0] for c in classes])
        captions = [[t.format(names[c]) for t in CLASS_CAPTIONS[:n_captions]] for c in classes]
        galleries.append(CaptionGallery(images, captions, name=f"classes-{k}"))
    return galleries


def _caption_items(data: Any, image_root: Path, split: str) -> list[tuple[Path, list[str]]] | None:
    """(image path, captions) of a Karpathy dict or an ALBEF list; None for neither."""
    items: list[tuple[Path, list[str]]] = []
    if isinstance(data, dict) and "images" in data:
        for im in data["images"]:
            if im.get("split") != split:
                continue
            rel = Path(im.get("filepath", "")) / im["filename"]
            items.append((image_root / rel, [s["raw"].strip() for s in im["sentences"]]))
    elif isinstance(data, list):
        for im in data:
            caps = im["caption"] if isinstance(im["caption"], list) else [im["caption"]]
            items.append((image_root / im["image"], caps))
    else:
        return None
    return items


def karpathy_gallery(
    annotations: str | os.PathLike,
    image_root: str | os.PathLike,
    split: str = "test",
    image_size: int = 224,
    limit: int | None = None,
) -> CaptionGallery:
    """COCO / Flickr30k Karpathy split: `dataset_coco.json` / `dataset_flickr30k.json`
    ({"images": [{filepath?, filename, split, sentences: [{raw}]}]}) or ALBEF's list
    ([{"image": relpath, "caption": [..]}], already one split)."""
    annotations, image_root = Path(annotations), Path(image_root)
    if not annotations.is_file():
        raise ClipxUsageError(f"caption annotations not found: {annotations}")
    try:
        items = _caption_items(json.loads(annotations.read_text()), image_root, split)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise ClipxUsageError(f"{annotations}: not valid JSON ({exc})") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise ClipxUsageError(
            f"{annotations}: not a Karpathy or ALBEF caption file (bad entry: {exc!r})"
        ) from None
    if items is None:
        raise ClipxUsageError(f"{annotations}: not a Karpathy or ALBEF caption file")
    if limit is not None:
        items = items[:limit]
    if not items:
        raise ClipxUsageError(f"{annotations}: no images in split '{split}'")
    images = []
    for path, _ in items:
        if not path.is_file():
            raise ClipxUsageError(f"image listed in {annotations.name} not found: {path}")
        images.append(image_to_tensor(open_rgb(path), image_size, str(path)))
    return CaptionGallery(
        torch.stack(images), [c for _, c in items], name=f"{annotations.stem}-{split}"
    )
