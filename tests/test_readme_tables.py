"""Every result table in README.md and docs/*.md names its artifact, and agrees with it.

Convention: a markdown table with at least one measured number (a numeric cell with decimals)
is a result table; the first non-blank line under it reads
``Artifact: `path` `` (several paths: ``Artifacts: `a`, `b` ``), each a file under docs/results/ or
benchmarks/results/. Against a markdown artifact every row must equal a row of an artifact table
that has all the README table's columns; against JSON or CSV every number of every numeric cell
must be one of the artifact's numbers at the precision shown (or that number x 100, a fraction
shown in percent). A table edited by hand, or an artifact re-run without the table, fails here."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.evaluation.excerpt import excerpt, pipe_tables

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
ARTIFACT_LINE = re.compile(r"^Artifacts?: (.+)$")
ARTIFACT_ROOTS = ("docs/results/", "benchmarks/results/")
NUMERIC_CELL = re.compile(r"^[-+]?\d+(\.\d+)?(e[-+]?\d+)?(\s*±\s*\d+(\.\d+)?)?\s*[×x%]?$")
NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def numeric(cell: str) -> bool:
    core = re.sub(r"\s*\(.*\)$", "", cell.replace("*", "").strip())
    return bool(NUMERIC_CELL.match(core))


def measured(cell: str) -> bool:
    """A measured number (has decimals); integers alone are settings (defaults, counts)."""
    return numeric(cell) and bool(re.search(r"\d\.\d", cell))


def result_tables(page: Path) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    """(where, header, rows, artifact paths) of every table with a numeric cell in `page`."""
    lines = page.read_text().splitlines()
    out = []
    for _, end, header, rows in pipe_tables(page.read_text()):
        if not any(measured(c) for row in rows for c in row):
            continue
        after = next((x for x in lines[end:] if x.strip()), "")
        match = ARTIFACT_LINE.match(after.strip())
        paths = re.findall(r"`([^`]+)`", match.group(1)) if match else []
        out.append((f"{page.name}:{end}", header, rows, paths))
    return out


def artifact_numbers(path: Path) -> list[float]:
    if path.suffix == ".json":
        found: list[float] = []

        def walk(obj):
            if isinstance(obj, bool):
                return
            if isinstance(obj, (int, float)):
                found.append(float(obj))
            elif isinstance(obj, str):
                found.extend(float(x) for x in NUMBER.findall(obj))
            elif isinstance(obj, dict):
                list(map(walk, obj.values()))
            elif isinstance(obj, list):
                list(map(walk, obj))

        walk(json.loads(path.read_text()))
        return found
    with path.open(newline="") as fh:
        return [float(x) for row in csv.reader(fh) for cell in row for x in NUMBER.findall(cell)]


def shown(number: str, values: list[float]) -> bool:
    """`number` as printed equals one of `values` rounded to its decimals (or x 100)."""
    decimals = len(number.split(".")[1]) if "." in number and "e" not in number else 0
    target, half = float(number), 0.5 * 10**-decimals + 1e-9
    return any(abs(v - target) <= half or abs(100 * v - target) <= half for v in values)


def check_table(header: list[str], rows: list[list[str]], paths: list[str]) -> list[str]:
    """Problems of one table against its artifacts (empty: it agrees)."""
    files = [REPO / p for p in paths]
    problems = [f"artifact {p} does not exist" for p, f in zip(paths, files) if not f.is_file()]
    if problems:
        return problems
    md = [f for f in files if f.suffix == ".md"]
    if md:
        candidates = [
            (h, r) for f in md for *_, h, r in pipe_tables(f.read_text()) if set(header) <= set(h)
        ]
        if not candidates:
            return [f"no table in {paths} has the columns {header}"]
        seen = {tuple(row[h.index(c)] for c in header) for h, r in candidates for row in r}
        return [f"row {row} is not in {paths}" for row in rows if tuple(row) not in seen]
    values = [v for f in files for v in artifact_numbers(f)]
    return [
        f"{number} ({row[0]}) is not in {paths}"
        for row in rows
        for cell in row
        if numeric(cell)
        for number in NUMBER.findall(re.sub(r"\(.*\)$", "", cell))
        if not shown(number, values)
    ]


ALL = [t for page in PAGES for t in result_tables(page)]


def test_the_pages_have_result_tables():
    assert len(ALL) >= 15
    assert any(where.startswith("README.md") for where, *_ in ALL)


@pytest.mark.parametrize("where,header,rows,paths", ALL, ids=[t[0] for t in ALL])
def test_table_names_its_artifact_and_agrees(where, header, rows, paths):
    assert paths, f"{where}: no `Artifact:` line under the table"
    assert all(p.startswith(ARTIFACT_ROOTS) for p in paths), paths
    assert check_table(header, rows, paths) == []


def test_a_stale_table_fails():
    """A changed number is caught, in a markdown-backed and in a JSON-backed table."""
    kinds = {}
    for _, header, rows, paths in ALL:
        kinds.setdefault(Path(paths[0]).suffix, (header, rows, paths))
    assert {".md", ".json"} <= set(kinds)
    for header, rows, paths in kinds.values():
        assert check_table(header, rows, paths) == []
        col = next(k for k, c in enumerate(rows[0]) if measured(c))
        stale = [[*rows[0][:col], "987.65", *rows[0][col + 1 :]], *rows[1:]]
        assert check_table(header, stale, paths), (paths, stale[0])


def test_the_headline_table_is_cut_from_its_artifact_by_code(monkeypatch):
    """README's table is exactly what `python -m clip_robust_ext.evaluation.excerpt
    docs/results/zs-power/results.md --where images=1000` prints."""
    monkeypatch.chdir(REPO)  # the artifact line names the path as given: repository-relative
    table = excerpt("docs/results/zs-power/results.md", where={"images": "1000"})
    assert table in (REPO / "README.md").read_text()
    assert table.count("\n| ") == 6  # 3 training lengths x (robust, clean), under the header


def test_excerpt_keeps_only_the_rows_asked_for():
    table = excerpt(REPO / "docs/results/zs-power/results.md", where={"images": "250"})
    rows = [line for line in table.splitlines() if line.startswith("| tecoa")]
    assert [r.split(" | ")[1] for r in rows] == ["250", "250", "250"]
    with pytest.raises(ClipxUsageError, match="no column \\['epochs'\\]"):
        excerpt(REPO / "docs/results/zs-power/results.md", where={"epochs": "1"})


def test_excerpt_names_what_exists_when_asked_for_what_does_not():
    with pytest.raises(ClipxUsageError, match="views: cifar10-jpegs_test_seen"):
        excerpt(REPO / "docs/results/zs-study/results.md", "cifar10-jpegs_test_unknown")
    with pytest.raises(ClipxUsageError, match="no column \\['robust@8/255'\\]"):
        excerpt(REPO / "docs/results/zs-study/results.md", columns=["model", "robust@8/255"])
