"""Lazy module attributes (PEP 562): the one mechanism by which clipx defers an import for
start-up time. `clipx --help` and `clipx recipe list` load every plugin package and the plugin
API but must not import torch, open_clip or TextAttack (tests/test_cli_startup.py measures it).

Where it is used, and why:
- clip_robust_ext (the package): re-exports the plugin API, whose heavy names load on use;
- clip_robust_ext.api: models, data, attacks, training, evaluation and run components import
  torch (or open_clip, TextAttack); the API's light names are imported at its top;
- clip_robust_ext.evaluation: the engine and tables import torch; protocols do not;
- clip_robust_ext.attacks.text: TextAttack is imported on first attack only;
- clip_robust_ext.analysis: matplotlib and torch;
- built-in plugin packages (clipx_saft, clipx_simplex, clipx_laat) re-export torch-heavy names.
Function-level imports remain only where a start-up command would otherwise load torch:
- cli, datacli, comparecli: each command imports what it runs (run.stages, run.evaluate,
  analysis, export, models.zoo, evaluation.leaderboard, evaluation.pairing, data) in its body;
- recipes, evaluation.protocols: validating a recipe or a protocol touches data.splits,
  data.suite, training.config and evaluation.testtime only when a recipe names them;
- attacks.text.attacker: TextAttack, behind its offline guard (attacks/text/env.py).
tests/test_architecture.py reads every table given to `lazy_exports`, every
`importlib.import_module("...")` and every function-level import as an edge of the import
graph, so a lazy import still counts and must point down the floors."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(
    module: str, where: dict[str, str], package: str | None = None
) -> Callable[[str], Any]:
    """A module `__getattr__` for `module`: name -> relative submodule (".defense") that defines
    it, imported on first access and cached in the module's namespace. Relative names resolve
    against `package` (default: `module` itself, right for a package's __init__)."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        submodule = where[name]  # from the module's own constant table, never user input
        value = getattr(importlib.import_module(submodule, package or module), name)
        setattr(sys.modules[module], name, value)  # later look-ups skip this
        return value

    return __getattr__
