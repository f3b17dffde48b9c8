"""Tables that fit a terminal: what the CLI prints is at most `WIDTH` columns wide.

The markdown and CSV files keep every column on one row; the terminal gets the same numbers
rearranged: one table per dataset view (a results header `<view> <metric>` is split by view),
the leading columns first and the rest in continuation tables that repeat the row keys, and long
free-text cells wrapped under their column (or, for very wide rows, one block per row)."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence

WIDTH = 100
_GAP = "  "
_NUMBER = re.compile(r"^[-+]?\d+(\.\d+)?%?(\s*±\s*\d+(\.\d+)?)?([×x])?$")
_MEASURED = re.compile(r"^[-+]?\d+\.\d+")


def fit_markdown(text: str, width: int = WIDTH) -> str:
    """The markdown `text` (prose and pipe tables) rendered for a terminal of `width` columns."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("|"):
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            out += _fit_pipe_table(lines[i:j], width)
            i = j
            continue
        indent = "  " if lines[i].startswith(("- ", "* ")) else ""
        out += textwrap.wrap(lines[i], width, subsequent_indent=indent, break_on_hyphens=False) or [
            ""
        ]
        i += 1
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def fit_rows(columns: Sequence[str], cells: list[list[str]], width: int = WIDTH) -> list[str]:
    """A listing (header `columns`, one row of strings per item) in `width` columns: one line per
    row when it fits, else the last column wrapped under itself, else one block per row."""
    widths = [max(len(c), *(len(row[k]) for row in cells)) for k, c in enumerate(columns)]
    fixed = sum(widths[:-1]) + len(_GAP) * (len(columns) - 1)
    if fixed + widths[-1] <= width or fixed + 30 <= width:
        last = max(width - fixed, len(columns[-1]))
        lines = [_join([c.upper() for c in columns], widths)]
        for row in cells:
            parts = textwrap.wrap(row[-1], last, break_on_hyphens=False) or [""]
            lines.append(_join([*row[:-1], parts[0]], widths))
            lines += [" " * fixed + part for part in parts[1:]]
        return lines
    return _blocks(columns, cells, width)


def _blocks(columns: Sequence[str], cells: list[list[str]], width: int) -> list[str]:
    """One block per row: the first cell as a heading, every other cell as `name: value`."""
    label = max(len(c) for c in columns[1:]) + 4
    lines: list[str] = []
    for row in cells:
        lines.append(row[0])
        for name, value in zip(columns[1:], row[1:]):
            head = f"  {name}:".ljust(label)
            lines += textwrap.wrap(
                value or "-",
                width,
                initial_indent=head,
                subsequent_indent=" " * len(head),
                break_on_hyphens=False,
            )
        lines.append("")
    return lines


def _join(row: Sequence[str], widths: Sequence[int]) -> str:
    return _GAP.join(v.rjust(w) if _NUMBER.match(v) else v.ljust(w) for v, w in zip(row, widths))


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _fit_pipe_table(lines: list[str], width: int) -> list[str]:
    header, rows = _cells(lines[0]), [_cells(x) for x in lines[2:]]
    rows = [r + [""] * (len(header) - len(r)) for r in rows]
    out: list[str] = []
    for title, cols in _views(header):
        if title:
            out += ["", title]
        out += _chunked([header[k] for k in cols], [[r[k] for k in cols] for r in rows], width)
    return out


def _views(header: list[str]) -> list[tuple[str, list[int]]]:
    """Columns grouped by dataset view when every metric header is `<view> <metric>` and each view
    has several; `avg` is dropped when it repeats a single view. Else one untitled group."""
    prefixes = [h.split(" ", 1)[0] if " " in h else None for h in header[1:]]
    counts = {p: prefixes.count(p) for p in prefixes}
    if None in counts or len(counts) < 2 or min(counts.values()) < 2:
        return [("", list(range(len(header))))]
    views = [p for p in dict.fromkeys(prefixes) if not (p == "avg" and len(counts) == 2)]
    out = []
    for view in views:
        cols = [k + 1 for k, p in enumerate(prefixes) if p == view]
        for k in cols:
            header[k] = header[k].split(" ", 1)[1]
        out.append(("average over views" if view == "avg" else view, [0, *cols]))
    return out


def _chunked(header: list[str], rows: list[list[str]], width: int) -> list[str]:
    """Aligned text tables of at most `width` columns: the leading columns without a measured
    (decimal) number are the row keys (at most 3: model, rank, seeds, lr...), repeated in every
    continuation table; the other columns fill tables left to right."""
    keys = 1
    while keys < min(3, len(header) - 1) and not any(_MEASURED.match(r[keys]) for r in rows):
        keys += 1
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(header)]
    base = sum(widths[:keys]) + len(_GAP) * (keys - 1)
    chunks: list[list[int]] = [[]]
    used = base
    for k in range(keys, len(header)):
        if chunks[-1] and used + len(_GAP) + widths[k] > width:
            chunks.append([])
            used = base
        chunks[-1].append(k)
        used += len(_GAP) + widths[k]
    out: list[str] = []
    for n, chunk in enumerate(chunks):
        cols = list(range(keys)) + chunk
        if n:
            out.append("")
        out.append(_join([header[k] for k in cols], [widths[k] for k in cols]).rstrip())
        out += [_join([r[k] for k in cols], [widths[k] for k in cols]).rstrip() for r in rows]
    return out
