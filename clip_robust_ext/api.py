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
- models: LoadedCLIP, ZeroShotClassifier, load_clip, vision_hidden_states (LLaVA's penultimate
  patch tokens), build_prompts, DEFAULT_TEMPLATES,
  PromptContext / attach_prompt_context / prompt_context_of (learned prompt vectors), build_model (a [model] table -> LoadedCLIP), load_weights, resolve_device, model_device,
  model_fingerprint,
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
- certification: CertifyProtocol (randomized smoothing), SmoothedClassifier
- evaluation: Protocol, evaluate, load_records, RETRIEVAL_FORMULAS, recall_hits, attack_success
- run directory and records: RunLock, START_LABEL, finished_models, write_results, result_path, read_json,
  component_fingerprint (a registered component's plugin version and code, for result-store keys),
  write_result, atomic_write_json, atomic_write_text, seed_everything, versions,
  plugin_versions, log, fit_markdown (a markdown table as a terminal of 100 columns shows it)
- configs: load_config (profiles + `--set`), read_toml, deep_merge, merge_profile, parse_set,
  apply_set, register_shipped
"""

from __future__ import annotations

from .cachekeys import component_fingerprint
from .errors import AdversarialCheckError, ClipxError, ClipxUsageError, closest, unknown_name
from .evaluation.protocols import Protocol
from .hookspecs import hookimpl
from .params import (
    check_kwargs,
    checked,
    coerce,
    keyword_parameters,
    signature_of,
    unknown_key,
)
from .plugin_manager import plugin_versions
from .recipes import (
    apply_set,
    deep_merge,
    load_config,
    merge_profile,
    parse_set,
    read_toml,
    register_shipped,
)
from .registry import KINDS, MODALITIES, Entry, Registry, entries, get, names
from .run.layout import START_LABEL
from .run.lock import RunLock
from .utils.eps import format_eps, parse_eps
from .utils.io import atomic_write_json, atomic_write_text
from .utils.lazy import lazy_exports
from .utils.log import log
from .utils.terminal import fit_markdown
from .utils.versions import versions

# name -> module that defines it (relative to clip_robust_ext), loaded on first use: every
# one of them imports torch, open_clip or TextAttack (utils/lazy.py)
_LAZY = {
    # models
    "LoadedCLIP": ".models",
    "ZeroShotClassifier": ".models",
    "load_clip": ".models",
    "vision_hidden_states": ".models",
    "build_prompts": ".models",
    "DEFAULT_TEMPLATES": ".models",
    "PromptContext": ".models",
    "attach_prompt_context": ".models",
    "prompt_context_of": ".models",
    "model_fingerprint": ".evaluation.records",
    "procedural_small": ".training.pretrain",
    "procedural_small_model": ".training.pretrain",
    # data
    "ImageFolderDataset": ".data",
    "TarImageFolder": ".data",
    "ProceduralShapes": ".data",
    "load_suite_dataset": ".data",
    "suite_names": ".data",
    "TECOA_16": ".data",
    "TEMPLATE_SETS": ".data",
    "assets_dir": ".data",
    "few_shot_indices": ".data",
    "targets_of": ".data",
    "sample_indices": ".data",
    "CIFAR10_SPLITS": ".data",
    "SHAPES_SPLITS": ".data",
    "ClassSubset": ".data",
    "CaptionGallery": ".data.captions",
    "class_galleries": ".data.captions",
    "karpathy_gallery": ".data.captions",
    "procedural_galleries": ".data.captions",
    "pre_caption": ".data.captions",
    "cleaned_gallery": ".data.captions",
    # attacks
    "build_attack": ".attacks",
    "attack_mode": ".attacks",
    "verify_adversarial": ".attacks",
    "AttackOutput": ".attacks",
    "RetrievalAttackOutput": ".attacks.base",
    "factory_for": ".attacks.torchattacks_adapter",
    "torchattacks_classes": ".attacks.torchattacks_adapter",
    "build_autoattack": ".attacks.autoattack_adapter",
    "build_pgd": ".attacks.pgd",
    "EarlyExitPGD": ".attacks.pgd",
    "TextAttackConfig": ".attacks.text.config",
    "text_attack_parameters": ".attacks.text.config",
    "FIDELITY_DEFAULTS": ".attacks.text.config",
    "TextAttackOnPrompts": ".attacks.text.classifier",
    "MultimodalAttack": ".attacks.text.classifier",
    "config_from_params": ".attacks.text.classifier",
    "CLIPTextAttacker": ".attacks.text",
    "CaptionAttackCache": ".attacks.text",
    # defenses and training
    "Defense": ".training.defense",
    "Batch": ".training.defense",
    "TrainContext": ".training.defense",
    "TrainConfig": ".training.config",
    "clip_contrastive_loss": ".training",
    "train": ".training",
    "TestTimeDefense": ".evaluation.testtime",
    "CertifyProtocol": ".evaluation.certify",
    "SmoothedClassifier": ".evaluation.smoothing",
    "DefendedClassifier": ".evaluation.testtime",
    # evaluation
    "evaluate": ".evaluation",
    "load_records": ".evaluation",
    "RETRIEVAL_FORMULAS": ".evaluation.retrieval",
    "recall_hits": ".evaluation.retrieval",
    "attack_success": ".evaluation.retrieval",
    # run directory and records
    "build_model": ".run.builders",
    "finished_models": ".run.records",
    "build_dataset": ".run.builders",
    "load_weights": ".run.builders",
    "resolve_device": ".utils.devices",
    "model_device": ".utils.devices",
    "write_results": ".run.records",
    "result_path": ".evaluation.records",
    "read_json": ".evaluation.records",
    "write_result": ".evaluation.records",
    "seed_everything": ".utils.seeding",
    # configs
}

__getattr__ = lazy_exports(__name__, _LAZY, package=__package__)


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
    "Protocol",
    "RunLock",
    "START_LABEL",
    "apply_set",
    "atomic_write_json",
    "atomic_write_text",
    "component_fingerprint",
    "deep_merge",
    "fit_markdown",
    "load_config",
    "log",
    "merge_profile",
    "parse_set",
    "plugin_versions",
    "read_toml",
    "register_shipped",
    "versions",
]
__all__ += list(_LAZY)
