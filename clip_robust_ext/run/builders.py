"""Component builders: a validated [model] / [data] / defense table -> the object it names.

Below the recipes floor: these read validated tables only (recipes/ validates them) and import
only data, models, registry, training config, errors and utils."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data import restrict, sample_indices
from ..data.checks import check_image
from ..data.splits import factory_kwargs
from ..errors import ClipxError, ClipxUsageError
from ..models import load_into_clip, read_state_dict
from ..models.adapters import load_adapter, read_scope
from ..registry import get
from ..training.config import TrainConfig
from ..utils.devices import resolve_device
from ..utils.seeding import seed_everything


def build_model(spec: dict[str, Any], device: Any = None, seed: int | None = None):
    """The model of a validated [model] table (seeded: random-init weights are reproducible)."""

    if seed is not None:
        seed_everything(seed)
    kwargs = {k: v for k, v in spec.items() if k not in ("source", "checkpoint", "adapter")}
    if kwargs.get("device") == "auto":  # a model's own device: validated like --device
        kwargs["device"] = str(resolve_device("auto"))
    loaded = get("models", spec["source"]).obj(**kwargs)
    if spec.get("checkpoint"):
        path = Path(spec["checkpoint"]).expanduser()
        if not path.is_file():
            raise ClipxUsageError(f"model.checkpoint: file not found: {path}")
        load_into_clip(loaded.model, read_state_dict(path), str(path))
        loaded.info["checkpoint"] = str(path.resolve())
    if spec.get("adapter"):
        load_adapter(loaded, spec["adapter"])
    if device is not None:
        loaded.model.to(device)
    return loaded


def load_weights(loaded, path: Path):
    """Load the checkpoint at `path` (any supported format) into `loaded`'s model; recorded in
    its info."""
    load_into_clip(loaded.model, read_state_dict(path), str(path))
    loaded.info["checkpoint"] = str(path)
    scope = read_scope(Path(path).parent)  # scope, trainable count, base of a trained model
    if scope is not None:
        loaded.info["scope"] = scope
    return loaded


class _Subset:
    """A deterministic subset that keeps `classnames` and `caption(i)` of its dataset."""

    def __init__(self, dataset: Any, indices: list[int]):
        self.dataset, self.indices = dataset, indices
        self.classnames = getattr(dataset, "classnames", None)
        if callable(getattr(dataset, "caption", None)):
            self.caption = lambda i: dataset.caption(self.indices[i])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]


def build_dataset(spec: dict[str, Any], seed: int):
    """(dataset, classnames, templates) of a validated [data] table."""

    kwargs = factory_kwargs(spec, ("dataset", "templates", "n"))
    dataset = restrict(get("datasets", spec["dataset"]).obj(**kwargs), spec, "data")
    if spec.get("n") is not None and spec["n"] < len(dataset):
        dataset = _Subset(dataset, sample_indices(len(dataset), spec["n"], seed))
    if len(dataset) == 0:
        raise ClipxUsageError(f"data: dataset '{spec['dataset']}' is empty")
    classnames = getattr(dataset, "classnames", None)
    if not classnames:
        raise ClipxUsageError(f"data: dataset '{spec['dataset']}' has no class names")

    check_image(dataset[0][0], f"data: dataset '{spec['dataset']}'", 0)  # before any training
    return dataset, list(classnames), template_list(spec.get("templates"), "data.templates")


def template_list(value: Any, key: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return value

    templates = get("templates", value).obj
    if isinstance(templates, dict):
        raise ClipxUsageError(
            f"{key}: '{value}' is a description set; a list of '{{}}' templates is needed here"
        )
    return list(templates)


def build_defense(method: dict[str, Any]):

    defense = get("defenses", method["name"]).obj(**method["params"])
    if not hasattr(defense, "loss"):
        raise ClipxError(
            f"defense '{method['name']}': its factory returned {type(defense).__name__}, not a Defense"
        )
    return defense


def train_config(method: dict[str, Any]):

    return TrainConfig.from_dict(dict(method["train"]))
