"""mkdocs hooks: the two generated pages of the documentation site.

* ``api.md``: one mkdocstrings block per public name of ``clip_robust_ext.api``, read from the
  module itself (its ``__all__``), grouped by the module that defines it; a public class or
  function without a docstring stops the build.
* ``leaderboard.md``: ``clipx leaderboard`` (the command users run, in a subprocess) over the
  committed result cards, once per protocol hash that two or more cards share, with its plots.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parents[2]
CARDS = REPO / "docs" / "results" / "leaderboard" / "cards"


def on_files(files, config):
    """Add the generated pages to the site's files (nothing is written into docs/)."""
    files.append(File.generated(config, "api.md", content=api_page()))
    for path, content in leaderboard_files().items():
        files.append(File.generated(config, path, content=content))
    return files


def api_page() -> str:
    import clip_robust_ext.api as api

    by_module: dict[str, list[str]] = defaultdict(list)
    constants: list[str] = []
    undocumented: list[str] = []
    for name in sorted(api.__all__):
        obj = inspect.unwrap(getattr(api, name))
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            constants.append(name)
            continue
        if not inspect.getdoc(obj):
            undocumented.append(name)
        by_module[obj.__module__].append(obj.__qualname__)
    if undocumented:
        raise PluginError(f"public API names without a docstring: {', '.join(undocumented)}")
    lines = [
        "# API reference",
        "",
        "Everything a script or a plugin imports comes from `clip_robust_ext.api` (re-exported by",
        "`clip_robust_ext`). This page is generated from the module's `__all__` and the",
        "docstrings when the site is built; names are grouped by the module that defines them.",
        "",
        "::: clip_robust_ext.api",
        "    options:",
        "      members: false",
        "      show_root_heading: false",
        "",
    ]
    for module in sorted(by_module):
        lines += [f"## `{module}`", ""]
        for qualname in by_module[module]:
            lines += [f"::: {module}.{qualname}", "    options:", "      heading_level: 3", ""]
    lines += ["## Constants", ""]
    lines += [f"- `{name}`: {type(getattr(api, name)).__name__}" for name in constants]
    return "\n".join(lines) + "\n"


def protocol_hashes() -> list[str]:
    """The protocol hashes that two or more committed cards share, most cards first."""
    counts = Counter(
        json.loads(p.read_text())["protocol"]["hash"] for p in sorted(CARDS.rglob("cards/*.json"))
    )
    return [h for h, n in counts.most_common() if n >= 2]


def leaderboard_files() -> dict[str, str | bytes]:
    """leaderboard.md and its plots: `clipx leaderboard CARDS --protocol HASH` per hash."""
    page = [
        "# Leaderboard",
        "",
        "Generated when the site is built, by the command anyone can run over the committed",
        "result cards (`docs/results/leaderboard/cards`):",
        "",
    ]
    out: dict[str, str | bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for h in protocol_hashes():
            args = ["leaderboard", str(CARDS.relative_to(REPO)), "--protocol", h[:12]]
            page += ["```bash", f"clipx {' '.join(args)} --out leaderboard/{h[:12]}", "```", ""]
            board = Path(tmp) / h
            proc = subprocess.run(
                [sys.executable, "-m", "clip_robust_ext", *args, "--out", str(board)],
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            if proc.returncode:
                raise PluginError(f"clipx leaderboard failed: {proc.stderr.strip()[-500:]}")
            page += [_demote((board / "leaderboard.md").read_text()), ""]
            for png in sorted(board.glob("*.png")):
                out[f"leaderboard/{h[:12]}/{png.name}"] = png.read_bytes()
                page.append(f"![{png.stem}](leaderboard/{h[:12]}/{png.name})")
            page.append("")
    out["leaderboard.md"] = "\n".join(page) + "\n"
    return out


def _demote(markdown: str) -> str:
    """The command's headings one level down (the page has its own title)."""
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines())
