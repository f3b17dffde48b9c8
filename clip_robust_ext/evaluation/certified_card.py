"""The card's certified section: certificates are lower bounds, attacks upper bounds.

Certified numbers (randomized smoothing) are kept apart from the empirical `results` so no table
mixes a guarantee with an attack's outcome. The check: at every radius the empirical robust
accuracy of the smoothed classifier must be at least its certified accuracy; anything else
means the certificate or the attack's scoring is wrong.
"""

from __future__ import annotations

from typing import Any

KIND = "certified"
_FIELDS = ("dataset_key", "sigma", "eps", "eps_str", "n", "certified_acc", "empirical_acc")


def certified_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The certified records, reduced to what the card shows."""
    return [
        {**{k: r.get(k) for k in _FIELDS}, "abstain_rate": r.get("abstain_rate")}
        for r in records
        if r.get("kind") == KIND
    ]


def check_certified_le_empirical(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Fails when an attack beats a certificate (empirical < certified at the same radius)."""
    bad = [
        f"{r['dataset_key']} sigma {r['sigma']} r {r['eps_str']}: empirical "
        f"{r['empirical_acc']:.2f} < certified {r['certified_acc']:.2f}"
        for r in rows
        if r["empirical_acc"] is not None and r["empirical_acc"] < r["certified_acc"]
    ]
    status = "fail" if bad else "pass"
    detail = "; ".join(bad) or f"empirical >= certified at all {len(rows)} (view, radius) rows"
    return {"name": "certified_le_empirical", "status": status, "detail": detail}


def add_certified(card: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Put the certified section and its check on a card (no-op without certified records)."""
    rows = certified_rows(records)
    if not rows:
        return card
    card["certified"] = rows
    check = check_certified_le_empirical(rows)
    checks = card.setdefault("checks", {})
    checks.setdefault("results", []).append(check)
    if check["status"] == "fail":
        checks["failed"] = [*checks.get("failed", []), check["name"]]
    return card


def certified_markdown(card: dict[str, Any]) -> list[str]:
    """The certified table of a card page (empty without certified rows)."""
    rows = card.get("certified") or []
    if not rows:
        return []
    lines = [
        "",
        "## Certified (randomized smoothing; lower bounds, not attack results)",
        "",
        "| dataset | sigma | L2 radius | n | certified | empirical PGD-L2 | abstain |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["dataset_key"], r["sigma"], r["eps_str"], r["n"]]
        cells += [f"{r[k]:.2f}" for k in ("certified_acc", "empirical_acc", "abstain_rate")]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


_COLUMNS = ("label", "dataset_key", "sigma", "eps_str", "n", "certified_acc", "empirical_acc")


def certified_table(records: list[dict[str, Any]]) -> str:
    """The run's markdown table for certified records: one row per (model, view, radius)."""
    first = records[0]
    lines = [
        f"### {first.get('protocol', 'certify')} (certified: randomized smoothing)",
        "",
        f"sigma {first['sigma']}, n0 {first['n0']}, n {first['n_draws']}, alpha {first['alpha']}; "
        "certified = CERTIFY correct with radius >= r (abstain = wrong); empirical = smoothed "
        "majority vote on PGD-L2 (EOT) examples at r; percent",
        "",
        "| model | view | sigma | L2 radius | n | certified | empirical PGD-L2 | abstain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        cells = [r.get(k) for k in _COLUMNS[:5]]
        cells += [f"{r[k]:.2f}" for k in ("certified_acc", "empirical_acc", "abstain_rate")]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def certified_csv_rows(records: list[dict[str, Any]]) -> list[list[Any]]:
    """CSV rows (protocol first) of the certified records."""
    return [
        [r.get("protocol"), *(r.get(k) for k in _COLUMNS), r.get("abstain_rate")] for r in records
    ]
