"""Run the clipx benchmark suite: a markdown table on stdout, every number in a JSON file.

    python -m benchmarks.run            # full suite (~25-30 min on one core of a 2-core CPU)
    python -m benchmarks.run --quick    # CI subset (< 1 min)
    python -m benchmarks.run --only pgd,naive --json out.json

Every figure is a ratio of two costs measured in the same process (or, for DDP, the same run),
interleaved round by round and summarised by medians, so it holds on a noisy shared machine.
CPU time of the process is the clock for single-process figures (see benchmarks/timing.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

SECTIONS = (
    "pgd",
    "naive",
    "graph",
    "autoattack",
    "text",
    "training",
    "ddp",
    "memory",
    "options",
    "early_exit",
    "cascade",
    "train_options",
    "vitb32",
)
QUICK_SECTIONS = ("pgd", "naive", "autoattack", "training")

QUICK = {
    "pgd": [{"batch_size": 8, "steps": 10, "rounds": 7}],
    "naive": {
        "groups": [(10, 1), (100, 1)],
        "batch_sizes": [8],
        "k_cached": {8: 5},
        "budget_s": 4.0,
    },
    "graph": [{"n_classes": 100, "n_templates": 1, "batch_size": 8, "steps": 2, "rounds": 2}],
    "autoattack": {"batch_size": 8, "n_iter": 5, "rounds": 9},
    "text": {"batch_size": 8, "n_batches": 4, "rounds": 2, "multimodal": False},
    "training": [
        {
            "defense": "tecoa",
            "params": {},
            "batch_size": 8,
            "steps": 7,
            "skip": 2,
            "attack_steps": 2,
        }
    ],
    "ddp": {"batch_size": 16, "steps": 6, "skip": 2, "rounds": 1},
    "options": [
        {
            "model": "procedural-small",
            "option": "channels_last",
            "batch_size": 8,
            "steps": 2,
            "rounds": 3,
        }
    ],
    "early_exit": {"n": 48, "eps_list": ("4/255",), "steps": 10, "batch_size": 48},
    "cascade": {"n": 24},
    "vitb32": {
        "pgd": {"batch_size": 2, "steps": 1, "rounds": 1},
        "naive": None,
        "memory": {"n": 4, "batch_size": 4, "steps": 1},
    },
    "train_options": [
        {
            "model": "clipx-small-c10",
            "option": "channels_last",
            "batch_size": 8,
            "steps": 4,
            "skip": 1,
            "rounds": 1,
        }
    ],
    "memory": {
        "settings": [("procedural", None, True)],
        "n": 10000,
        "streaming": [],
        "streaming_n": 10000,
    },
}
FULL = {
    "pgd": [
        {"batch_size": 32, "steps": 10, "rounds": 7},
        {"batch_size": 256, "steps": 10, "rounds": 5},
    ],
    "naive": {
        "groups": [(10, 1), (100, 1), (1000, 1), (10, 80), (100, 80), (1000, 80)],
        "batch_sizes": [32, 256],
        "k_cached": {32: 10, 256: 2},
        "budget_s": 6.0,
    },
    "graph": [
        {"n_classes": c, "n_templates": t, "batch_size": 32, "steps": 2, "rounds": 2}
        for c, t in [(10, 1), (100, 1), (1000, 1), (10, 80)]
    ],
    "autoattack": {"batch_size": 32, "n_iter": 10, "rounds": 5},
    "text": {"batch_size": 32, "n_batches": 5, "rounds": 3, "multimodal": True},
    "training": [
        {
            "defense": "tecoa",
            "params": {},
            "batch_size": 32,
            "steps": 9,
            "skip": 2,
            "attack_steps": 2,
        },
        {
            "defense": "mmcoa",
            "params": {"transformation": "charswap"},
            "batch_size": 32,
            "steps": 8,
            "skip": 2,
            "attack_steps": 10,
        },
    ],
    "ddp": {"batch_size": 32, "steps": 10, "skip": 3, "rounds": 2},
    "memory": {
        "settings": [
            ("procedural", None, True),
            ("procedural", "fgsm", False),
            ("cifar", None, False),
        ],
        "n": 10000,
        "streaming": [None, "fgsm"],
        "streaming_n": 20000,
    },
}
FULL["options"] = [
    {"model": m, "option": o, "batch_size": 64, "steps": 10, "rounds": 5}
    for m in ("procedural-small", "clipx-small-c10")
    for o in ("channels_last", "compile")
]
FULL["early_exit"] = {  # the must-show: PGD-100 on 500 images
    "n": 500,
    "eps_list": ("1/255", "4/255"),
    "steps": 100,
    "batch_size": 128,
    "bounds": {"1/255": 2.0, "4/255": 8.0},
}
FULL["cascade"] = {"n": 100}
FULL["vitb32"] = {
    "pgd": {"batch_size": 8, "steps": 3, "rounds": 3},
    "naive": {"n_classes": 100, "n_templates": 1, "batch_size": 8},
    "memory": {"n": 64, "batch_size": 32, "steps": 2},
}
FULL["train_options"] = [
    {"model": m, "option": o, "batch_size": 32, "steps": 6, "skip": 2, "rounds": 1}
    for m in ("procedural-small", "clipx-small-c10")
    for o in ("channels_last", "compile")
]
BOUNDS = {"pgd": 1.10, "autoattack": 1.05, "training": 1.25, "memory": 0.10}


def _section(name: str, cfg: dict[str, Any], loaded) -> list[dict[str, Any]]:
    from . import bench_attacks as A
    from . import bench_evaluation as E
    from . import bench_memory as M
    from . import bench_training as T

    c = cfg[name]
    if name == "pgd":
        return [
            A.pgd_overhead(loaded, x["batch_size"], x["steps"], x["rounds"], BOUNDS["pgd"])
            for x in c
        ]
    if name == "naive":
        rows = []
        for n_classes, n_templates in c["groups"]:
            rows += A.naive_group(
                loaded, n_classes, n_templates, c["batch_sizes"], c["k_cached"], c["budget_s"]
            )
        return rows
    if name == "graph":
        return [A.naive_graph_cell(loaded, **x) for x in c]
    if name == "autoattack":
        return [
            A.autoattack_overhead(
                loaded, c["batch_size"], c["n_iter"], c["rounds"], BOUNDS["autoattack"]
            )
        ]
    if name == "text":
        return A.text_attack_cache(
            loaded, c["batch_size"], c["n_batches"], c["rounds"], c["multimodal"]
        )
    if name == "training":
        return [
            T.defense_step(
                x["defense"],
                x["params"],
                x["batch_size"],
                x["steps"],
                x["skip"],
                x["attack_steps"],
                BOUNDS["training"],
            )
            for x in c
        ]
    if name == "ddp":
        return [T.ddp_throughput(c["batch_size"], c["steps"], c["skip"], c["rounds"])]
    if name == "options":
        return [A.option_speedup(**x) for x in c]
    if name == "early_exit":
        return E.early_exit_rows(**c)
    if name == "cascade":
        return [E.cascade_row(**c)]
    if name == "vitb32":
        from . import bench_vitb32 as V

        vit = V.vitb32()
        rows = [V.pgd_overhead_vitb32(vit, **c["pgd"])]
        if c["naive"]:
            rows += V.naive_cell_vitb32(vit, **c["naive"])
        return rows + [V.memory_row_vitb32(**c["memory"])]
    if name == "train_options":
        return [T.train_option_speedup(**x) for x in c]
    if name == "memory":
        rows = []
        for kind, attack, judge in c["settings"]:
            rows += M.memory_rows(kind, attack, c["n"], judge)
        for attack in c["streaming"]:
            rows.append(M.streaming_row(attack, c["streaming_n"], BOUNDS["memory"]))
        return rows
    raise ValueError(name)


def run_sections(names: list[str], cfg: dict[str, Any], log, on_rows=None) -> list[dict[str, Any]]:
    """Every section in turn; a section that raises becomes an error row, the others still run."""
    import traceback

    from .common import small_c10

    rows: list[dict[str, Any]] = []
    loaded = small_c10() if set(names) & {"pgd", "naive", "graph", "autoattack", "text"} else None
    for name in names:
        start = time.perf_counter()
        log(f"[{name}]")
        try:
            new = _section(name, cfg, loaded)
        except Exception as exc:  # report and go on: one broken figure must not hide the rest
            log(traceback.format_exc())
            new = [
                {
                    "section": "error",
                    "id": f"{name}_error",
                    "figure": f"{name}: error",
                    "setting": f"{type(exc).__name__}: {exc}"[:300],
                    "value": float("nan"),
                    "op": "info",
                    "bound": None,
                    "ok": False,
                }
            ]
        for row in new:
            rows.append(row)
            flag = "" if row.get("ok") is not False else "  (!)"
            log(f"  {row['id']}: {row['value']:.4g}{flag}")
        log(f"  ({time.perf_counter() - start:.0f} s)")
        if on_rows is not None:
            on_rows(rows)
    return rows


# -- reporting ----------------------------------------------------------------------------------
def _num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, (int, float)):
        return f"{x:.{digits}f}" if abs(x) < 10 else f"{x:.1f}"
    return str(x)


def _bound(row: dict[str, Any]) -> str:
    if row["op"] in ("<=", ">="):
        return f"{row['op']} {row['bound']}"
    if row["op"].startswith("within"):
        return "model +-10%"
    return "(info)"


def _ok(row: dict[str, Any]) -> str:
    return {True: "ok", False: "FAIL", None: ""}[row.get("ok")]


def markdown(rows: list[dict[str, Any]]) -> str:
    out = []
    main = [r for r in rows if r["section"] not in ("naive", "naive-graph")]
    if main:
        out += ["| Figure | Setting | Ratio | Bound | |", "|---|---|---:|---|---|"]
        for r in main:
            out.append(
                f"| {r['figure']} | {r['setting']} | {_num(r['value'])} | {_bound(r)} | {_ok(r)} |"
            )
    naive = [r for r in rows if r["section"] in ("naive", "naive-graph")]
    if naive:
        out += [
            "",
            "Cached class-text matrix vs naive wrappers, per attack step. Speedup = naive step / "
            "cached step; model = (T_step + T_text) / T_step, with T_step the cached attack's step "
            "(image fwd+bwd; its overhead over a bare fwd+bwd is the PGD row) and T_text the text "
            "forward (re-encode, frozen) or forward+backward (text under the graph) of all prompts. "
            "Times are user CPU (computation). Also shown: the agreement with a bare image fwd+bwd "
            "as the image term, and with user + system time (adds the kernel's page faults).",
            "",
            "| Naive wrapper | Classes | Templates | Batch | Prompts | T_step (s) | T_text (s) "
            "| Model | Measured | Meas/model | bare-fb model | user+sys | Same adv. "
            "| Naive steps timed | |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
        ]
        for r in naive:
            d = r["detail"]
            u = d.get("user", d)
            kind = "re-encode, frozen" if r["section"] == "naive" else "text under graph"
            steps, kc = d["k_naive"], d["k_cached"]
            scaled = f"{steps} (scaled to {kc})" if steps != kc else f"{steps}"
            fb = r.get("agreement_bare_fb_user")
            out.append(
                f"| {kind} | {r['classes']} | {r['templates']} | {r['batch']} | {d['prompts']} "
                f"| {u.get('cached_step_s', u['image_fb_s']):.4f} | {u['text_fwd_s']:.4f} "
                f"| {_num(r.get('predicted_user', r['predicted']))}x "
                f"| {_num(r.get('value_user', r['value']))}x "
                f"| {r.get('agreement_user', r['agreement']):.3f} "
                f"| {'-' if fb is None else f'{fb:.3f}'} | {r['agreement']:.3f} "
                f"| {_num(r['identical'])} | {scaled} | {_ok(r)} |"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="CI subset, < 1 min")
    p.add_argument("--only", default="", help=f"comma-separated sections of {','.join(SECTIONS)}")
    p.add_argument("--json", default=None, help="output file (default runs/benchmarks/<mode>.json)")
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    p.add_argument("--strict", action="store_true", help="exit 1 when a bound is not met")
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="SECTION=JSON",
        help="replace one section's settings (smaller runs on a busy machine); stored in the JSON",
    )
    args = p.parse_args(argv)

    from .common import setup_env
    from .timing import LoadMonitor, machine

    setup_env()
    names = [s for s in args.only.split(",") if s] or list(
        QUICK_SECTIONS if args.quick else SECTIONS
    )
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    cfg = dict(QUICK if args.quick else FULL)
    for item in args.config:
        section, _, value = item.partition("=")
        if section not in SECTIONS:
            p.error(f"--config: unknown section {section!r}")
        try:
            cfg[section] = json.loads(value)
        except json.JSONDecodeError as exc:
            p.error(f"--config {section}: not JSON ({exc})")
    mode = "quick" if args.quick else "full"
    out = Path(args.json or Path("runs") / "benchmarks" / f"{mode}.json")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    command = " ".join(
        ["python -m benchmarks.run", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]
    )
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(rows: list[dict[str, Any]], load: LoadMonitor, complete: bool) -> dict[str, Any]:
        result = {
            "schema": "clipx.bench.v1",
            "mode": mode,
            "complete": complete,
            "sections": names,
            "command": command,
            "elapsed_s": round(time.perf_counter() - started, 1),
            "load": load.report(),
            "machine": machine(),
            "clock": "process CPU time, user + system (single-process figures); "
            "wall time (DDP throughput)",
            "config": {k: cfg[k] for k in names},
            "rows": rows,
            "failed": [r["id"] for r in rows if r.get("ok") is False],
        }
        out.write_text(json.dumps(result, indent=1, default=str))
        return result

    with LoadMonitor() as load:
        # rewritten after every section: an interrupted run keeps what it measured
        rows = run_sections(names, cfg, log, on_rows=lambda rows: write(rows, load, False))
    result = write(rows, load, True)
    elapsed = result["elapsed_s"]
    table = markdown(rows)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    ld = result["load"]
    print(table)
    print(
        f"\n{mode} run, {elapsed:.0f} s wall; load average (1 min) during the run: median "
        f"{ld['load1_median']}, max {ld['load1_max']} on {ld['cpus']} CPUs; "
        f"torch threads {result['machine']['torch_threads']}; JSON: {out}"
    )
    if result["failed"]:
        print(f"not within bounds: {', '.join(result['failed'])}")
    return 1 if args.strict and result["failed"] else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
