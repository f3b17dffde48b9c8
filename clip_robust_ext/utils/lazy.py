"""Lazy package attributes (PEP 562), so a plugin package can re-export torch-heavy names without
importing torch when it loads: `clipx --help` loads every plugin package (docs/PLUGINS.md)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: name -> relative submodule (".defense") that defines
    it, imported on first access and cached in the package's namespace."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        submodule = where[name]  # from the package's own constant table, never user input
        value = getattr(importlib.import_module(submodule, package), name)
        setattr(importlib.import_module(package), name, value)  # later look-ups skip this
        return value

    return __getattr__
