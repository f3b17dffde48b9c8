"""`clipx plugin new NAME`: a working plugin skeleton from the template shipped here.

The skeleton is a pip-installable package (pyproject with the `clipx` entry point), one image
attack registered through `register_attacks`, and tests that pass as generated; its author
replaces the attack and keeps the structure."""

from __future__ import annotations

import re
import string
from pathlib import Path

from ..errors import ClipxUsageError

TEMPLATE = Path(__file__).parent / "template"
_NAME = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")


def names_for(name: str) -> dict[str, str]:
    """Plugin (entry-point) name, import module and distribution of plugin NAME."""
    if not _NAME.fullmatch(name or ""):
        raise ClipxUsageError(
            f"plugin name {name!r}: use lower-case letters, digits and single '-' or '_' "
            "(starting with a letter), e.g. lab-attacks"
        )
    plain = name.removeprefix("clipx-").removeprefix("clipx_") or name
    module = "clipx_" + plain.replace("-", "_")
    return {"name": plain, "module": module, "dist": "clipx-" + plain.replace("_", "-")}


def _target(relative: Path, module: str) -> Path:
    parts = [module if p == "module" else p for p in relative.parts]
    if parts[-1] == "test_plugin.py.tmpl":
        parts[-1] = f"test_{module.removeprefix('clipx_')}.py.tmpl"
    return Path(*parts).with_suffix("")


def new_plugin(name: str, parent: str | Path = ".") -> Path:
    """Write the skeleton of plugin NAME into parent/clipx-NAME; returns that folder."""
    values = names_for(name)
    root = Path(parent) / values["dist"]
    if root.exists():
        raise ClipxUsageError(f"{root} already exists; choose another name or folder")
    for source in sorted(TEMPLATE.rglob("*.tmpl")):
        out = root / _target(source.relative_to(TEMPLATE), values["module"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(string.Template(source.read_text()).substitute(values))
    return root
