"""`clipx leaderboard`: result cards ranked by robust accuracy, only within one protocol hash.

Cards whose protocol hash differs from the ranked group's are set apart, each with the protocol
fields that differ (sample indices, n, seed, classes, attacks ...). The zoo's published numbers
(models/zoo.toml `reported`) are listed as "reported" rows; where a zoo entry declares the
`protocol_hash` its numbers were made under and a card of that model shares it, the difference
measured - reported is shown.

Writes leaderboard.md / .csv / .html (sortable columns) / .json, scatter.png (robust vs clean)
and eps.png (robust accuracy vs eps, when the protocol has several budgets).
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
from pathlib import Path
from typing import Any

from ..errors import ClipxUsageError
from ..models.zoo import zoo
from ..utils.io import atomic_write, atomic_write_json, atomic_write_text
from .boardstats import annotate
from .cards import read_card
from .provenance import plugin_summary


def find_cards(paths: list[str | os.PathLike]) -> list[tuple[Path, dict[str, Any]]]:
    """Cards under each path: a card file, or a folder searched for cards/*.json."""
    found: dict[Path, tuple[Path, dict[str, Any]]] = {}  # a card reached twice counts once
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted(p.rglob("cards/*.json"))
        for f in files:
            card = read_card(f)
            if card is None and p.is_file():
                raise ClipxUsageError(f"{f} is not a clipx result card")
            if card is not None:
                found.setdefault(f.resolve(), (f, card))
    if not found:
        raise ClipxUsageError(f"no result cards under {', '.join(map(str, paths))}")
    return list(found.values())


def _diff(a: Any, b: Any, where: str = "") -> list[str]:
    """Dotted paths where two protocol contents differ (with both values when short)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(dict.fromkeys([*a, *b])):
            out += _diff(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{where}[{i}]")]
    if a == b:
        return []
    sa, sb = json.dumps(a, default=str), json.dumps(b, default=str)
    return [f"{where} ({sb} here, {sa} ranked)" if len(sa) + len(sb) < 80 else where]


def _average(card: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["eps_str"]: a for a in card["results"]["average"]}


def _eps_order(cards: list[dict[str, Any]]) -> list[str]:
    pairs = {a["eps_str"]: a["eps"] for c in cards for a in c["results"]["average"]}
    return sorted(pairs, key=lambda e: pairs[e] if pairs[e] is not None else -1)


def _name(card: dict[str, Any]) -> str:
    m = card["model"]
    return m.get("zoo") and f"zoo:{m['zoo']}" or m.get("hub") and f"hf-hub:{m['hub']}" or m["label"]


def rank(cards: list[tuple[Path, dict[str, Any]]]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) ranked by mean robust accuracy at the largest eps (ties: robust mean over
    the eps list, then clean); cards with a failed strength check last, unranked."""
    only = [c for _, c in cards]
    budgets = _eps_order(only)
    top = budgets[-1] if budgets else None
    attacks = list(
        dict.fromkeys(a for c in only for a in (_average(c).get(top) or {}).get("per_attack", {}))
    )
    rows = []
    for path, c in cards:
        avg = _average(c)
        first = next(iter(avg.values()), {})
        row: dict[str, Any] = {
            "model": _name(c),
            "kind": "measured",
            "clean": first.get("clean"),
            **{f"robust@{e}": (avg.get(e) or {}).get("robust") for e in budgets},
            **{f"{a}@{top}": (avg.get(top) or {}).get("per_attack", {}).get(a) for a in attacks},
            "checks": ", ".join(c["checks"].get("failed") or []) or c["checks"].get("level", "-"),
            "fwd/sample": c["cost"].get("forward_per_sample"),
            "bwd/sample": c["cost"].get("backward_per_sample"),
            "wall_s": c["cost"].get("wall_s"),
            "weights": c["model"]["weights_sha256"][:12],
            "plugins": plugin_summary(c.get("components") or {}) or "-",
            "components": c.get("components") or {},
            "card": str(path),
            "_card": (path, c),
        }
        rows.append(row)
    key = f"robust@{top}" if top else "clean"
    flagged = {id(r) for r, (_, c) in zip(rows, cards) if c["checks"].get("failed")}
    for r in rows:
        curve = [r[f"robust@{e}"] for e in budgets if r.get(f"robust@{e}") is not None]
        r["robust_mean"] = round(sum(curve) / len(curve), 4) if curve else None
    rows.sort(
        key=lambda r: (
            id(r) in flagged,
            -(r.get(key) or -1),
            -(r.get("robust_mean") or -1),
            -(r.get("clean") or -1),
        )
    )
    for i, r in enumerate(rows, 1):  # a card whose attacks look too weak is listed, not ranked
        r["rank"] = "flagged" if id(r) in flagged else i
    annotate(rows, top)  # intervals; entries that cannot be told apart share a rank
    seeds = ["seed"] if len({r["seed"] for r in rows}) > 1 else []
    columns = ["rank", "model", *seeds, "kind", "clean", *[f"robust@{e}" for e in budgets]]
    columns += ["ci"]
    columns += ["robust_mean"] if len(budgets) > 1 else []
    columns += [f"{a}@{top}" for a in attacks]
    columns += [
        "vs above",
        "checks",
        "fwd/sample",
        "bwd/sample",
        "wall_s",
        "weights",
        "plugins",
        "card",
    ]
    return columns, rows


def reported_rows(ranked: list[dict[str, Any]], phash: str, everything: bool) -> list[dict]:
    """Published numbers from the zoo as rows; `diff` = measured - reported where a measured
    card of that zoo model shares the protocol hash the entry declares."""

    measured = {c["model"].get("zoo"): c for c in ranked if c["model"].get("zoo")}
    rows = []
    for name, entry in zoo().items():
        if not everything and name not in measured:
            continue
        same = entry.get("protocol_hash") == phash and name in measured
        clean = next((r["acc"] for r in entry.get("reported", []) if r["eps"] == "0"), None)
        for r in entry.get("reported", []):
            if r["eps"] == "0":
                continue
            row = {
                "model": f"zoo:{name}",
                "kind": "reported",
                "eps": r["eps"],
                "clean": clean,
                "robust": r["acc"],
                "protocol": entry.get("protocol", "-"),
                "source": entry.get("source", "-"),
                "diff": None,
            }
            if same:
                got = _average(measured[name]).get(r["eps"], {}).get("robust")
                row["diff"] = None if got is None else round(got - r["acc"], 2)
            rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def _md_table(columns: list[str], rows: list[dict[str, Any]]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += [
        "| " + " | ".join(_fmt(r.get(c)).replace("|", "/") for c in columns) + " |" for r in rows
    ]
    return out


def build(
    paths: list[str | os.PathLike], protocol: str | None = None, all_reported: bool = False
) -> dict[str, Any]:
    """Group cards by protocol hash; rank the chosen group (default: the largest)."""
    cards = find_cards(paths)
    groups: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path, c in cards:
        groups.setdefault(c["protocol"]["hash"], []).append((path, c))
    if protocol is not None:
        match = [h for h in groups if h.startswith(protocol)]
        if len(match) != 1:
            raise ClipxUsageError(
                f"--protocol {protocol}: {'no' if not match else 'several'} protocol hashes match; "
                f"the cards have {', '.join(groups)}"
            )
        phash = match[0]
    else:
        phash = max(groups, key=lambda h: len(groups[h]))  # ties: the first seen
    chosen = groups[phash]
    ref = chosen[0][1]["protocol"]
    columns, rows = rank(chosen)
    apart = []
    for h, members in groups.items():
        if h == phash:
            continue
        why = _diff(ref["content"], members[0][1]["protocol"]["content"])
        for path, c in members:
            apart.append(
                {
                    "card": str(path),
                    "model": _name(c),
                    "protocol": c["protocol"]["name"],
                    "hash": h,
                    "why": "protocol differs: " + "; ".join(why[:6]),
                }
            )
    return {
        "protocol": {"hash": phash, "name": ref["name"], "content": ref["content"]},
        "columns": columns,
        "rows": rows,
        "set_apart": apart,
        "reported": reported_rows([c for _, c in chosen], phash, all_reported),
        "cards": [c for _, c in chosen],
    }


def markdown(board: dict[str, Any]) -> str:
    p = board["protocol"]
    content = p["content"]
    datasets = ", ".join(f"{d['key']} (n={d['n']})" for d in content["datasets"])
    attacks = ", ".join(a["label"] for a in content["attacks"]) or "clean only"
    lines = [
        f"### Leaderboard: protocol `{p['name']}` (hash `{p['hash']}`)",
        "",
        f"{datasets}; attacks {attacks}; {content['norm']} eps "
        + ", ".join(f"{e * 255:g}/255" for e in content["eps"])
        + f"; seed {content['seed']}. Mean accuracy over datasets (%), ranked by robust accuracy "
        "at the largest eps; robust = per-sample worst case over the attacks. `ci`: its 95% "
        "interval (Clopper-Pearson, samples pooled over datasets). An entry that cannot be told "
        "apart from the one above shares its rank (`vs above`: paired bootstrap interval and exact "
        "McNemar on the per-sample outcomes, or Fisher's exact test where a card has none). "
        "`checks`: failed attack-strength checks (such cards are listed last, unranked), else the "
        "level that ran.",
        "",
    ]
    shown = [c for c in board["columns"] if c != "card"]
    lines += _md_table(shown, board["rows"])
    if board["set_apart"]:
        lines += ["", f"Set apart (not ranked with the {len(board['rows'])} above):", ""]
        lines += [f"- `{a['model']}` ({a['card']}): {a['why']}" for a in board["set_apart"]]
    if board["reported"]:
        lines += [
            "",
            "Reported (published numbers, models/zoo.toml); `diff` = measured - reported, only "
            "where the protocol is the same:",
            "",
        ]
        cols = ["model", "kind", "eps", "clean", "robust", "diff", "protocol"]
        lines += _md_table(cols, board["reported"])
    return "\n".join(lines) + "\n"


def csv_text(board: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=board["columns"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(board["rows"])
    return buf.getvalue()


_SORT_JS = """
document.querySelectorAll('th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.from(body.rows);
    var asc = th.dataset.asc !== 'true';
    th.dataset.asc = asc;
    rows.sort(function (a, b) {
      var x = a.cells[col].textContent, y = b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def html_page(board: dict[str, Any]) -> str:
    p = board["protocol"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in board["columns"])
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in board["columns"])
        + "</tr>"
        for r in board["rows"]
    )
    apart = "".join(
        f"<li><code>{html.escape(a['model'])}</code>: {html.escape(a['why'])}</li>"
        for a in board["set_apart"]
    )
    rcols = ["model", "kind", "eps", "clean", "robust", "diff", "protocol"]
    rep = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in rcols) + "</tr>"
        for r in board["reported"]
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>clipx leaderboard {html.escape(p["name"])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}th{{cursor:pointer;background:#eee}}</style></head>
<body><h1>clipx leaderboard: protocol {html.escape(p["name"])} ({p["hash"]})</h1>
<p>Mean accuracy over datasets (%); click a column header to sort.</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>Set apart</h2><ul>{apart or "<li>none</li>"}</ul>
<h2>Reported (published)</h2>
<table><thead><tr>{"".join(f"<th>{c}</th>" for c in rcols)}</tr></thead><tbody>{rep}</tbody></table>
<script>{_SORT_JS}</script></body></html>
"""


def plots(board: dict[str, Any], out: Path) -> list[Path]:
    """scatter.png (robust at the largest eps vs clean) and eps.png (robust vs eps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    budgets = _eps_order(board["cards"])
    top = budgets[-1] if budgets else None
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for r in board["rows"]:
        if r.get(f"robust@{top}") is not None:
            ax.scatter(r["clean"], r[f"robust@{top}"])
            ax.annotate(r["model"], (r["clean"], r[f"robust@{top}"]), fontsize=7)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"robust accuracy at {top} (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(_save(fig, out / "scatter.png"))
    plt.close(fig)
    if len(budgets) > 1:
        fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
        eps = {a["eps_str"]: a["eps"] for c in board["cards"] for a in c["results"]["average"]}
        for r in board["rows"]:
            pts = [
                (eps[e] * 255, r[f"robust@{e}"])
                for e in budgets
                if r.get(f"robust@{e}") is not None
            ]
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=r["model"])
        ax.set_xlabel("eps (x 1/255)")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, out / "eps.png"))
        plt.close(fig)
    return written


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def write(board: dict[str, Any], out: str | os.PathLike) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "md": atomic_write_text(out / "leaderboard.md", markdown(board)),
        "csv": atomic_write_text(out / "leaderboard.csv", csv_text(board)),
        "html": atomic_write_text(out / "leaderboard.html", html_page(board)),
    }
    atomic_write_json(out / "leaderboard.json", {k: v for k, v in board.items() if k != "cards"})
    files["json"] = out / "leaderboard.json"
    for p in plots(board, out):
        files[p.stem] = p
    return files
