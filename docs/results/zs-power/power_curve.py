"""The zs-study power curve from a `--profile power` run's per-sample outcomes (samples.npz).

Each trained model against the start model ("clip") on the same unseen test images: clean and
robust accuracy at 1/255, the paired difference with its 95% bootstrap interval and the exact
McNemar p (clip_robust_ext.evaluation.paired, what `clipx compare` prints), on the first 250,
500 and all 1000 images (the images are a seeded random draw, so a prefix is a smaller draw).

    python docs/results/zs-power/power_curve.py docs/results/zs-power/samples.npz > curve.md
"""

from __future__ import annotations

import sys

from clip_robust_ext.evaluation.outcomes import load_outcomes
from clip_robust_ext.evaluation.paired import compare

EPS = "1/255"


def main(argv: list[str]) -> int:
    blocks = {b.label: b for b in load_outcomes(argv[0])}
    start = blocks.pop("clip")
    print(
        "| model | images | metric | accuracy | start | difference [95% interval] | "
        "gained / lost | McNemar p |"
    )
    print("|---|---:|---|---:|---:|---|---:|---:|")
    for label in sorted(blocks, key=lambda s: int(s.rsplit("s", 1)[1])):
        block = blocks[label]
        assert (block.indices == start.indices).all(), "not the same images"
        for metric in ("robust", "clean"):
            a, b = block.metric(metric, EPS), start.metric(metric, EPS)
            for n in (250, 500, len(a)) if metric == "robust" else (len(a),):
                c = compare(a[:n], b[:n], names=(label, "clip"))
                print(
                    f"| {label} | {n} | {metric} | {c.acc_a:.1f} | {c.acc_b:.1f} | "
                    f"{c.diff:+.1f} [{c.lo:+.1f}, {c.hi:+.1f}] | {c.a_only} / {c.b_only} | "
                    f"{c.p:.2g} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
