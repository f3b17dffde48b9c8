"""Result tables for documentation, cut from the artifact a run wrote, never typed by hand.

A run's `results.md` (or a sweep's or leaderboard's markdown) holds one pipe table per dataset view,
each under a `**<view>**` line. `excerpt` copies one of them, optionally keeping only some columns,
and adds the `Artifact:` line that tests/test_readme_tables.py follows back to the file:

    python -m clip_robust_ext.evaluation.excerpt docs/results/zs-study/results.md \\
        --view cifar10-jpegs_test_unseen --columns model,seeds,clean,robust@1/255
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ..errors import ClipxUsageError

_VIEW = re.compile(r"^\*\*(.+)\*\*$")


def cells(line: str) -> list[str]:
    """The stripped cells of one markdown table row."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def pipe_tables(text: str) -> list[tuple[str, int, list[str], list[list[str]]]]:
    """(view, index of the line after it, header, rows) of every pipe table in `text`; the view is
    the last `**...**` line above the table ("" before any)."""
    lines, out, view, i = text.splitlines(), [], "", 0
    while i < len(lines):
        match = _VIEW.match(lines[i].strip())
        view = match.group(1) if match else view
        if lines[i].startswith("|") and i + 1 < len(lines) and set(lines[i + 1]) <= set("|-: "):
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out.append((view, j, cells(lines[i]), [cells(x) for x in lines[i + 2 : j]]))
            i = j
        else:
            i += 1
    return out


def excerpt(
    path: str | Path,
    view: str = "",
    columns: list[str] | None = None,
    where: dict[str, str] | None = None,
) -> str:
    """The table of `view` in the markdown artifact `path` (the first table when no view is
    given), restricted to `columns` in their order and to the rows whose cells equal `where`
    (column -> value), followed by its `Artifact:` line."""
    tables = pipe_tables(Path(path).read_text())
    found = [t for t in tables if t[0] == view] if view else tables[:1]
    if not found:
        views = ", ".join(sorted({t[0] for t in tables if t[0]})) or "(none)"
        raise ClipxUsageError(f"{path}: no table for view '{view}'; views: {views}")
    _, _, header, rows = found[0]
    columns = columns or header
    missing = [c for c in [*columns, *(where or {})] if c not in header]
    if missing:
        raise ClipxUsageError(f"{path}: no column {missing}; columns: {', '.join(header)}")
    rows = [r for r in rows if all(r[header.index(c)] == v for c, v in (where or {}).items())]
    keep = [header.index(c) for c in columns]
    align = ["---" if k == 0 else "---:" for k in range(len(keep))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row[k] for k in keep) + " |" for row in rows]
    return "\n".join(lines) + f"\n\nArtifact: `{Path(path).as_posix()}`\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", help="a results.md (or other markdown) a run wrote")
    parser.add_argument("--view", default="", help="the dataset view, e.g. cifar10-jpegs_test_seen")
    parser.add_argument("--columns", default="", help="comma-separated columns to keep, in order")
    parser.add_argument(
        "--where", action="append", default=[], help="COLUMN=VALUE: keep only matching rows"
    )
    args = parser.parse_args(argv)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] or None
    try:
        where = dict(w.split("=", 1) for w in args.where)
    except ValueError:
        print(f"Error: --where takes COLUMN=VALUE, got {args.where}", file=sys.stderr)
        sys.exit(2)
    try:
        print(excerpt(args.artifact, args.view, columns, where), end="")
    except (ClipxUsageError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
