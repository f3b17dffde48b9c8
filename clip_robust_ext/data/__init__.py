"""Datasets (images in [0, 1], labels, cleaned class names), templates and deterministic subsets."""

from .folders import ImageFolderDataset, TarImageFolder, clean_classname
from .paths import assets_dir, cache_dir, data_root
from .procedural import ProceduralShapes
from .sampling import few_shot_indices, sample_indices, targets_of
from .splits import CIFAR10_SPLITS, SHAPES_SPLITS, SUBSET_KEYS, ClassSubset, restrict
from .suite import TECOA_16, load_suite_dataset, suite_names
from .templates import TEMPLATE_SETS

__all__ = [
    "CIFAR10_SPLITS",
    "SHAPES_SPLITS",
    "SUBSET_KEYS",
    "ClassSubset",
    "restrict",
    "TECOA_16",
    "TEMPLATE_SETS",
    "ImageFolderDataset",
    "ProceduralShapes",
    "TarImageFolder",
    "assets_dir",
    "cache_dir",
    "clean_classname",
    "data_root",
    "few_shot_indices",
    "load_suite_dataset",
    "sample_indices",
    "suite_names",
    "targets_of",
]
