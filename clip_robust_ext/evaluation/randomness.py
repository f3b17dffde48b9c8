"""Randomized pipelines: found by running them twice, then attacked with EOT and scored worst-case.

A model or a model behind a test-time defense may be random at inference (noise, random crops,
dropout left on). Attacks written for deterministic classifiers overrate such pipelines: early
exit stops a sample at a misclassification under one random draw that the scoring draw does not
repeat, a single-sample gradient follows one draw's noise, and one scoring draw lets a sample
that is wrong half the time count as robust. The engine therefore *measures* determinism (two
forward passes of the same batch, eval mode, no grad) instead of trusting a declaration, and
against a non-deterministic pipeline:

- turns early exit off (every attack, whatever the protocol or the attack spec says);
- gives gradient attacks EOT: `eot_samples` gradient draws averaged per step (pgd ->
  torchattacks.EOTPGD, apgd/apgdt `eot_iter`) and AutoAttack its `rand` version, unless the
  attack spec sets them itself;
- scores each adversarial example `final_draws` times and keeps the worst case (robust only if
  every draw is correct).

What was found and done is stored with every record (`pipeline`) and read by the
attack-strength checks (strength.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..attacks import attack_mode
from ..data.checks import collate_labelled

PROBE_N = 8  # images the determinism probe runs twice (the first of the protocol's samples)
# the attack parameter that averages gradients over random draws, per registered attack name
EOT_PARAMS = {"pgd": "eot_samples", "apgd": "eot_iter", "apgdt": "eot_iter", "eotpgd": "eot_iter"}
RTOL, ATOL = 1e-4, 1e-5  # two passes closer than this are the same (GPU kernels may differ in ulps)


def deterministic(model: nn.Module, x: torch.Tensor) -> bool:
    """Do two forward passes of `model` on `x` (eval mode, no grad) give the same logits?"""
    with attack_mode(model), torch.no_grad():
        first = model(x)
        second = model(x)
    return first.shape == second.shape and bool(torch.allclose(first, second, RTOL, ATOL))


def probe_images(
    ds: Any, indices: Any, device: torch.device, what: str = "dataset"
) -> torch.Tensor:
    """The first PROBE_N evaluated images, fp32 on `device`; a malformed image is reported as
    `what`'s (the dataset's name), the way the evaluation itself would report it."""
    x, _ = collate_labelled([ds[i] for i in list(indices)[:PROBE_N]], what=what)
    return x.to(device=device, dtype=torch.float32)


def randomized_params(name: str, params: dict[str, Any], eot_samples: int) -> dict[str, Any]:
    """An attack's parameters against a non-deterministic pipeline: early exit off, EOT on
    (the spec's own EOT / version settings win)."""
    params = dict(params)
    if "early_exit" in params:
        params["early_exit"] = False
    if name in EOT_PARAMS:
        params.setdefault(EOT_PARAMS[name], eot_samples)
    if name == "autoattack":
        params.setdefault("version", "rand")
    return params


def pipeline_record(
    is_deterministic: bool, eot_samples: int, final_draws: int, early_exit: bool
) -> dict[str, Any]:
    """What a record stores about the scored pipeline's randomness and how it was handled."""
    if is_deterministic:
        return {"deterministic": True, "early_exit": early_exit}
    return {
        "deterministic": False,
        "early_exit": False,
        "early_exit_disabled": early_exit,  # the protocol asked for it; not used here
        "eot_samples": eot_samples,
        "final_draws": final_draws,
    }
