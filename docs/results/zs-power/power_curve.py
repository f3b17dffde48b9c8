"""The zs-study power curve from a `--profile power` run's per-sample outcomes.

For each trained model against the start model ("clip"), on the same test images: robust
accuracy at one eps (clean and correct under every attack of the protocol), the paired
difference with a 95% percentile bootstrap interval over images (10,000 resamples) and the exact
McNemar p (two-sided binomial test on the discordant images, scipy.stats.binomtest). Also writes
outcomes.csv: one row per image, one 0/1 column per model.

    python docs/results/zs-power/power_curve.py RUN_DIR/seed-0 [EPS] > power.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import binomtest


def outcomes(seed_dir: Path, eps: str) -> tuple[list[int], dict[str, np.ndarray]]:
    """label -> robust flags at eps (per image, in sample order) from run_dir/eval/*/*/*.json."""
    out: dict[str, np.ndarray] = {}
    indices: list[int] = []
    for path in sorted((seed_dir / "eval").glob("*/*/*.json")):
        if ".partial." in path.name:
            continue
        data = json.loads(path.read_text())
        samples, records = data["samples"], data["records"]
        rec = next(r for r in records if r.get("eps_str") == eps)
        keys = [f"{a['label']}@{eps}" for a in rec["attacks"]]  # the engine's per-sample keys
        robust = np.array([c == "1" for c in samples["clean"]])
        for k in keys:
            robust &= np.array([c == "1" for c in samples["attacks"][k]])
        if indices and samples["indices"] != indices:
            raise SystemExit(f"{path}: not the same test images as the other models")
        indices = samples["indices"]
        out[data["label"]] = robust
    return indices, out


def paired(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """a - b in points, its 95% bootstrap interval over images, exact McNemar p."""
    d = a.astype(float) - b.astype(float)
    idx = rng.integers(0, len(d), size=(10_000, len(d)))
    boot = d[idx].mean(axis=1) * 100
    gained, lost = int(((a) & (~b)).sum()), int(((~a) & b).sum())
    p = binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"diff": 100 * d.mean(), "lo": lo, "hi": hi, "p": p, "gained": gained, "lost": lost}


def main(argv: list[str]) -> int:
    seed_dir = Path(argv[0])
    eps = argv[1] if len(argv) > 1 else "1/255"
    indices, flags = outcomes(seed_dir, eps)
    rng = np.random.default_rng(0)
    start = flags.pop("clip")
    print(f"robust accuracy at {eps}, {len(indices)} unseen test images; model - start (clip):\n")
    print("| model | robust | start | difference [95% CI] | images gained / lost | McNemar p |")
    print("|---|---:|---:|---|---:|---:|")
    for label, f in flags.items():
        s = paired(f, start, rng)
        print(
            f"| {label} | {100 * f.mean():.1f} | {100 * start.mean():.1f} | "
            f"{s['diff']:+.1f} [{s['lo']:+.1f}, {s['hi']:+.1f}] | {s['gained']} / {s['lost']} | "
            f"{s['p']:.2g} |"
        )
    cols = ["clip", *flags]
    rows = [",".join(["index", *cols])]
    allf = {"clip": start, **flags}
    rows += [
        ",".join([str(i)] + [str(int(allf[c][j])) for c in cols]) for j, i in enumerate(indices)
    ]
    (seed_dir / "outcomes.csv").write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
