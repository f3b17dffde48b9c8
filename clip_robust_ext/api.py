"""The plugin API: everything a clipx plugin imports, from one place (docs/PLUGINS.md).

Built-in plugins (plugins/clipx_*) and the example plugin import only from here or from
`clip_robust_ext` itself (tests/test_architecture.py enforces it); names not listed here are
internal and may change. Importing this module is cheap: the names that need torch, open_clip or
TextAttack load on first use.

Groups:
- hooks and registries: hookimpl, Entry, Registry, entries, get, names, KINDS, MODALITIES
- errors: ClipxError, ClipxUsageError, AdversarialCheckError, closest, unknown_name
- parameters (one mechanism for every factory): checked, keyword_parameters, signature_of,
  coerce, check_kwargs, unknown_key, text_attack_parameters
- budgets: parse_eps, format_eps
- packaging: lazy_exports (a plugin package re-exports heavy names without importing torch)
- models: LoadedCLIP, ZeroShotClassifier, load_clip, build_prompts, DEFAULT_TEMPLATES,
  PromptContext / attach_prompt_context / prompt_context_of (learned prompt vectors), build_model (a [model] table -> LoadedCLIP), load_weights, device_of, model_fingerprint,
  procedural_small
- data: ImageFolderDataset, TarImageFolder, ProceduralShapes, build_dataset (a [data] table),
  CIFAR10_SPLITS / SHAPES_SPLITS / ClassSubset (declared seen / unseen class splits),
  load_suite_dataset, suite_names, TECOA_16, TEMPLATE_SETS, assets_dir, few_shot_indices,
  targets_of, sample_indices, CaptionGallery, class_galleries, karpathy_gallery,
  procedural_galleries
- attacks: build_attack, attack_mode, verify_adversarial, AttackOutput, RetrievalAttackOutput,
  factory_for, torchattacks_classes, build_autoattack, build_pgd, EarlyExitPGD, TextAttackConfig,
  TextAttackOnPrompts, MultimodalAttack, CLIPTextAttacker, CaptionAttackCache, config_from_params
- defenses and training: Defense, Batch, TrainContext, TrainConfig, clip_contrastive_loss, train
- test-time defenses: TestTimeDefense, DefendedClassifier
- evaluation: Protocol, evaluate, load_records, RETRIEVAL_FORMULAS, recall_hits, attack_success
- run directory and records: RunLock, START_LABEL, finished_models, write_results, result_path, read_json,
  component_fingerprint (a registered component's plugin version and code, for result-store keys),
  write_result, atomic_write_json, atomic_write_text, seed_everything, versions,
  plugin_versions, log
- configs: load_config (profiles + `--set`), read_toml, deep_merge, merge_profile, parse_set,
  apply_set, register_shipped
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import AdversarialCheckError, ClipxError, ClipxUsageError, closest, unknown_name
from .hookspecs import hookimpl
from .params import (
    check_kwargs,
    checked,
    coerce,
    keyword_parameters,
    signature_of,
    unknown_key,
)
from .registry import KINDS, MODALITIES, Entry, Registry, entries, get, names
from .utils.eps import format_eps, parse_eps
from .utils.lazy import lazy_exports

# name -> module (relative to clip_robust_ext) that defines it; loaded on first use
_LAZY = {
    # models
    "LoadedCLIP": "models",
    "ZeroShotClassifier": "models",
    "load_clip": "models",
    "build_prompts": "models",
    "DEFAULT_TEMPLATES": "models",
    "PromptContext": "models",
    "attach_prompt_context": "models",
    "prompt_context_of": "models",
    "model_fingerprint": "evaluation.records",
    "procedural_small": "training.pretrain",
    "procedural_small_model": "training.pretrain",
    # data
    "ImageFolderDataset": "data",
    "TarImageFolder": "data",
    "ProceduralShapes": "data",
    "load_suite_dataset": "data",
    "suite_names": "data",
    "TECOA_16": "data",
    "TEMPLATE_SETS": "data",
    "assets_dir": "data",
    "few_shot_indices": "data",
    "targets_of": "data",
    "sample_indices": "data",
    "CIFAR10_SPLITS": "data",
    "SHAPES_SPLITS": "data",
    "ClassSubset": "data",
    "CaptionGallery": "data.captions",
    "class_galleries": "data.captions",
    "karpathy_gallery": "data.captions",
    "procedural_galleries": "data.captions",
    "pre_caption": "data.captions",
    "cleaned_gallery": "data.captions",
    # attacks
    "build_attack": "attacks",
    "attack_mode": "attacks",
    "verify_adversarial": "attacks",
    "AttackOutput": "attacks",
    "RetrievalAttackOutput": "attacks.base",
    "factory_for": "attacks.torchattacks_adapter",
    "torchattacks_classes": "attacks.torchattacks_adapter",
    "build_autoattack": "attacks.autoattack_adapter",
    "build_pgd": "attacks.pgd",
    "EarlyExitPGD": "attacks.pgd",
    "TextAttackConfig": "attacks.text.config",
    "text_attack_parameters": "attacks.text.config",
    "FIDELITY_DEFAULTS": "attacks.text.config",
    "TextAttackOnPrompts": "attacks.text.classifier",
    "MultimodalAttack": "attacks.text.classifier",
    "config_from_params": "attacks.text.classifier",
    "CLIPTextAttacker": "attacks.text",
    "CaptionAttackCache": "attacks.text",
    # defenses and training
    "Defense": "training.defense",
    "Batch": "training.defense",
    "TrainContext": "training.defense",
    "TrainConfig": "training.config",
    "clip_contrastive_loss": "training",
    "train": "training",
    "TestTimeDefense": "evaluation.testtime",
    "DefendedClassifier": "evaluation.testtime",
    # evaluation
    "Protocol": "evaluation.protocols",
    "evaluate": "evaluation",
    "load_records": "evaluation",
    "RETRIEVAL_FORMULAS": "evaluation.retrieval",
    "recall_hits": "evaluation.retrieval",
    "attack_success": "evaluation.retrieval",
    # run directory and records
    "RunLock": "runner",
    "build_model": "runner",
    "finished_models": "runner",
    "build_dataset": "runner",
    "load_weights": "runner",
    "device_of": "runner",
    "write_results": "runner",
    "log": "runner",
    "START_LABEL": "recipes",
    "result_path": "evaluation.records",
    "read_json": "evaluation.records",
    "write_result": "evaluation.records",
    "component_fingerprint": "cachekeys",
    "atomic_write_json": "utils.io",
    "atomic_write_text": "utils.io",
    "seed_everything": "utils.seeding",
    "versions": "utils.versions",
    "plugin_versions": "plugins",
    # configs
    "load_config": "recipes",
    "read_toml": "recipes",
    "deep_merge": "recipes",
    "merge_profile": "recipes",
    "parse_set": "recipes",
    "apply_set": "recipes",
    "register_shipped": "recipes",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __package__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'clip_robust_ext.api' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "AdversarialCheckError",
    "ClipxError",
    "ClipxUsageError",
    "Entry",
    "KINDS",
    "MODALITIES",
    "Registry",
    "check_kwargs",
    "checked",
    "closest",
    "coerce",
    "entries",
    "format_eps",
    "get",
    "hookimpl",
    "keyword_parameters",
    "lazy_exports",
    "names",
    "parse_eps",
    "signature_of",
    "unknown_key",
    "unknown_name",
]
__all__ += list(_LAZY)
