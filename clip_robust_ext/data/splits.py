"""Class splits and held-out images: the zero-shot protocol's seen / unseen classes on any dataset.

The field's claim is *zero-shot* robustness: fine-tune on some classes, measure on classes the
fine-tuning never saw. A dataset spec (recipe `[data]`, or an evaluation dataset entry) restricts
itself with these keys, which never reach the dataset factory:

    classes      "seen" | "unseen" (a split the dataset declares) or an explicit list of class names
    label_space  "subset" (default): zero-shot over the subset's class names (5-way on a 5/5 split);
                 "all": every class name of the dataset, scored on the subset's images (the
                 generalised setting LAAT reports)
    holdout      "exclude" | "only": drop / keep only a per-class held-out part of the split (a
                 validation set carved from train images, e.g. for a learning-rate sweep)
    holdout_per_class   images per class held out (default 50), drawn with a fixed seed

A dataset declares named splits with a `class_splits` attribute ({"seen": [...], "unseen": [...]});
the built-in CIFAR-10 (JPEG tars and torchvision) and procedural shapes declare 5/5 splits below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ClipxUsageError, closest
from .sampling import few_shot_indices, targets_of

SUBSET_KEYS = ("classes", "label_space", "holdout", "holdout_per_class")
LABEL_SPACES = ("subset", "all")
HOLDOUT_MODES = ("exclude", "only")
HOLDOUT_SEED = 20_231_129  # fixed: the held-out images never depend on a run's seed

# LAAT's CIFAR-10 split (plugins/clipx_laat/paper.toml): vehicles and animals on both sides.
CIFAR10_SPLITS = {
    "seen": ["airplane", "automobile", "bird", "cat", "deer"],
    "unseen": ["dog", "frog", "horse", "ship", "truck"],
}
# procedural shapes: every other shape, so both sides hold round and angular shapes
SHAPES_SPLITS = {
    "seen": ["circle", "square", "cross", "star", "bar"],
    "unseen": ["triangle", "ring", "diamond", "crescent", "hexagon"],
}


def declared_splits(dataset: Any) -> dict[str, list[str]]:
    """The named class splits a dataset declares (empty when it declares none)."""
    return dict(getattr(dataset, "class_splits", None) or {})


def factory_kwargs(spec: dict[str, Any], reserved: Sequence[str]) -> dict[str, Any]:
    """The keys of a dataset spec that go to its factory (not the reserved or subset keys)."""
    return {k: v for k, v in spec.items() if k not in reserved and k not in SUBSET_KEYS}


def check_subset_spec(spec: dict[str, Any], where: str) -> None:
    """Type and value checks of the subset keys that need no dataset (run at `recipe show`)."""
    classes = spec.get("classes")
    if classes is not None and not (
        isinstance(classes, str)
        or (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes))
    ):
        raise ClipxUsageError(
            f"{where}: classes must be a declared split name or a non-empty list of class names"
        )
    space = spec.get("label_space", "subset")
    if space not in LABEL_SPACES:
        raise ClipxUsageError(f"{where}: label_space must be one of {LABEL_SPACES}, got {space!r}")
    if space == "all" and classes is None:
        raise ClipxUsageError(f"{where}: label_space = 'all' needs classes")
    holdout = spec.get("holdout")
    if holdout is not None and holdout not in HOLDOUT_MODES:
        raise ClipxUsageError(f"{where}: holdout must be one of {HOLDOUT_MODES}, got {holdout!r}")
    per_class = spec.get("holdout_per_class", 50)
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ClipxUsageError(f"{where}: holdout_per_class must be an integer >= 1")
    if "holdout_per_class" in spec and holdout is None:
        raise ClipxUsageError(f"{where}: holdout_per_class needs holdout = 'exclude' or 'only'")


def subset_tag(spec: dict[str, Any]) -> str:
    """A readable name of the restriction for result keys and tables ('' when there is none)."""
    parts = []
    classes = spec.get("classes")
    if isinstance(classes, str):
        parts.append(classes)
    elif classes is not None:
        parts.append(f"{len(classes)}classes")
    if spec.get("label_space") == "all":
        parts.append("all-names")
    if spec.get("holdout"):
        parts.append("holdout" if spec["holdout"] == "only" else "no-holdout")
    return "-".join(parts)


def resolve_classes(dataset: Any, classes: str | list[str], where: str) -> tuple[str, list[str]]:
    """(split name or 'custom', class names) of a `classes` value on this dataset."""
    names = list(dataset.classnames)
    if isinstance(classes, str):
        splits = declared_splits(dataset)
        if classes not in splits:
            shown = ", ".join(splits) or "none; give a list of class names"
            raise ClipxUsageError(
                f"{where}: the dataset declares no class split {classes!r}"
                f"{closest(classes, list(splits))} (declared: {shown})"
            )
        chosen, label = list(splits[classes]), classes
    else:
        chosen, label = list(classes), "custom"
    unknown = [c for c in chosen if c not in names]
    if unknown:
        raise ClipxUsageError(
            f"{where}: unknown class names {unknown[:5]}{closest(unknown[0], names)}"
        )
    if len(set(chosen)) != len(chosen):
        raise ClipxUsageError(f"{where}: a class is listed twice in {chosen}")
    return label, chosen


class ClassSubset:
    """The images of some classes (and/or outside a held-out part) of a dataset, relabelled.

    Keeps `classnames`, `targets`, `caption(i)` and `class_splits` so that trainers, samplers and
    the evaluation engine see an ordinary dataset."""

    def __init__(
        self,
        dataset: Any,
        indices: list[int],
        classnames: list[str],
        label_map: dict[int, int],
        description: dict[str, Any],
        targets: list[int] | None = None,  # the dataset's labels, when already read
    ):
        self.dataset, self.indices = dataset, indices
        self.classnames = classnames
        self.label_map = label_map
        self.description = description
        self.class_splits = declared_splits(dataset)
        base_targets = targets if targets is not None else targets_of(dataset)
        self.targets = [label_map[base_targets[i]] for i in indices]
        if callable(getattr(dataset, "caption", None)):
            self.caption = lambda i: dataset.caption(self.indices[i])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.dataset[self.indices[i]]
        return image, self.label_map[int(label)]


def holdout_indices(targets: Sequence[int], per_class: int) -> set[int]:
    """The held-out images: `per_class` per class, fixed seed (independent of the run's seed)."""
    return set(few_shot_indices(targets, per_class, HOLDOUT_SEED))


def restricts(spec: dict[str, Any]) -> bool:
    """Whether a dataset spec selects classes or a held-out part."""
    return any(k in spec for k in SUBSET_KEYS)


def restrict(dataset: Any, spec: dict[str, Any], where: str = "data") -> Any:
    """`dataset` restricted by the spec's subset keys; the dataset itself when it has none."""
    if not restricts(spec):
        return dataset
    check_subset_spec(spec, where)
    names = list(dataset.classnames)
    targets = targets_of(dataset)
    keep = list(range(len(dataset)))
    split_name, chosen = "all", names
    if spec.get("classes") is not None:
        split_name, chosen = resolve_classes(dataset, spec["classes"], where)
        wanted = {names.index(c) for c in chosen}
        keep = [i for i in keep if targets[i] in wanted]
    if spec.get("holdout"):
        held = holdout_indices(targets, spec.get("holdout_per_class", 50))
        only = spec["holdout"] == "only"
        keep = [i for i in keep if (i in held) == only]
    if spec.get("label_space", "subset") == "all":
        classnames, label_map = names, {i: i for i in range(len(names))}
    else:
        classnames = chosen
        label_map = {names.index(c): j for j, c in enumerate(chosen)}
    description = {
        "classes": split_name,
        "class_names": chosen,
        "label_space": spec.get("label_space", "subset"),
        "holdout": spec.get("holdout"),
    }
    return ClassSubset(dataset, keep, classnames, label_map, description, targets)
