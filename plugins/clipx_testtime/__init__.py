"""Test-time defenses (a registry kind of their own: `clipx testtime`, protocol key `testtime`).

TTC - "CLIP is Strong Enough to Fight Back: Test-time Counterattacks towards Zero-shot
Adversarial Robustness of CLIP" (Xing et al., CVPR 2025; github.com/Sxing2/CLIP-Test-time-
Counterattacks): before classifying, a few PGD steps within a small Linf budget push the image
embedding *away* from the embedding of the input as given; images whose embedding barely moves
under the random start ("false stability", tau below a threshold: the mark of an adversarial
image) keep a weighted mix of the counterattack steps, the others only the random start.
Written from the paper and a reading of the authors' code; deviations are listed in ttc.py.

"noise" - Gaussian input noise at every forward pass (noise.py): the negative control for
clipx's handling of randomized pipelines (docs/randomized.md).

R-TPT (per-input prompt tuning with reliability-weighted ensembling, CVPR 2025) is not built.
"""

from __future__ import annotations

from clip_robust_ext.api import hookimpl


@hookimpl
def register_testtime_defenses(register):
    from .noise import RandomNoise
    from .ttc import Counterattack

    register(
        "ttc",
        Counterattack,
        description="TTC test-time counterattack (Xing et al. CVPR'25): tau-gated PGD away from "
        "the input's own embedding, Linf 4/255, 2 steps",
    )
    register(
        "noise",
        RandomNoise,
        description="Gaussian input noise (sigma 16/255) at every forward pass: a randomized "
        "negative control, not a defense to report without EOT",
    )
