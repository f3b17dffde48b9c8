"""Evaluation-cost figures: early exit in PGD-k and the cascade over attacks.

Both arms of each ratio run in this process on the same samples with the same seeds, one after
the other per round (order alternating between rounds), timed by process CPU time and wall time;
the 1-minute load average is recorded next to every measurement. Pass counts (per-sample
forward+backward passes) are given alongside: they do not depend on the machine.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from clip_robust_ext.attacks import build_attack, verify_adversarial
from clip_robust_ext.data import sample_indices
from clip_robust_ext.models import ZeroShotClassifier

from .common import CIFAR10, SINGLE_TEMPLATE, Row, check, small_c10
from .timing import median


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _cifar_sample(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n CIFAR-10 test images drawn as a protocol draws them (sample_indices, `seed`)."""
    from .common import _cifar10_test

    ds = _cifar10_test()
    items = [ds[i] for i in sample_indices(len(ds), n, seed)]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def _attack_all(attack, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
    """Adversarial images of every sample, batch by batch, each batch seeded like the engine;
    (images, per-sample passes, cpu seconds, wall seconds, load before, load after)."""
    load0, cpu0, wall0 = _load(), time.process_time(), time.perf_counter()
    out, passes = [], 0
    for b in range(0, len(x), batch_size):
        torch.manual_seed(seed + b)
        out.append(attack(x[b : b + batch_size], y[b : b + batch_size]).images)
        passes += getattr(attack.impl, "passes", attack.params["steps"] * len(out[-1]))
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return torch.cat(out), passes, cpu, wall, load0, _load()


def early_exit_rows(
    n: int = 500,
    eps_list: tuple[str, ...] = ("1/255", "4/255"),
    steps: int = 100,
    alpha: str = "1/255",
    rounds: int = 1,
    batch_size: int = 128,
    seed: int = 0,
    bounds: dict[str, float] | None = None,
    device: str | torch.device = "cpu",
) -> list[Row]:
    """PGD-`steps` full length (torchattacks.PGD) / with early exit on clipx-small-c10, `n`
    CIFAR-10 test images (the clean-correct ones are attacked, as the engine does)."""
    from clip_robust_ext.utils.eps import parse_eps

    bounds = bounds or {}
    zs = ZeroShotClassifier(small_c10(), CIFAR10, templates=SINGLE_TEMPLATE).to(device).eval()
    zs.class_matrix()
    x_all, y_all = (t.to(device) for t in _cifar_sample(n, seed))
    with torch.no_grad():
        clean = torch.cat(
            [zs(x_all[b : b + 256]).argmax(1) == y_all[b : b + 256] for b in range(0, n, 256)]
        )
    x, y = x_all[clean], y_all[clean]
    rows = []
    for eps_s in eps_list:
        eps = parse_eps(eps_s)
        params = dict(eps=eps, alpha=parse_eps(alpha, name="alpha"), steps=steps)
        arms = {
            "full": build_attack("pgd", zs, **params),
            "early": build_attack("pgd", zs, **params, early_exit=True),
        }
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in arms}
        robust: dict[str, torch.Tensor] = {}
        for r in range(rounds):
            for name in list(arms) if r % 2 == 0 else list(arms)[::-1]:
                adv, passes, cpu, wall, l0, l1 = _attack_all(arms[name], x, y, batch_size, seed)
                verify_adversarial(x, adv, eps, "Linf", f"pgd ({name})")
                with torch.no_grad():
                    flags = torch.cat(
                        [
                            zs(adv[b : b + 256]).argmax(1) == y[b : b + 256]
                            for b in range(0, len(y), 256)
                        ]
                    )
                robust[name] = flags
                runs[name].append(
                    {"cpu_s": cpu, "wall_s": wall, "passes": passes, "load1": [l0, l1]}
                )
        cpu_ratio = median([a["cpu_s"] for a in runs["full"]]) / median(
            [a["cpu_s"] for a in runs["early"]]
        )
        wall_ratio = median([a["wall_s"] for a in runs["full"]]) / median(
            [a["wall_s"] for a in runs["early"]]
        )
        pass_ratio = runs["full"][0]["passes"] / runs["early"][0]["passes"]
        acc = {k: round(100.0 * int(v.sum()) / n, 2) for k, v in robust.items()}
        above = int((robust["early"] & ~robust["full"]).sum())
        bound = bounds.get(eps_s)
        ok_acc = acc["early"] <= acc["full"] and acc["full"] - acc["early"] <= 1.0
        rows.append(
            {
                "section": "early_exit",
                "id": f"early_exit_pgd{steps}_{eps_s.replace('/', '-')}",
                "figure": f"PGD-{steps} full length (torchattacks) / early exit, CPU time",
                "setting": f"clipx-small-c10, {n} CIFAR-10 test images ({len(y)} clean-correct "
                f"attacked), Linf {eps_s}, step {alpha}, seed {seed}",
                "value": cpu_ratio,
                "op": ">=" if bound is not None else "info",
                "bound": bound,
                "ok": (check(cpu_ratio, ">=", bound) if bound is not None else True) and ok_acc,
                "detail": {
                    "cpu_ratio": cpu_ratio,
                    "wall_ratio": wall_ratio,
                    "pass_ratio": pass_ratio,
                    "robust_acc_full": acc["full"],
                    "robust_acc_early_exit": acc["early"],
                    "clean_acc": round(100.0 * int(clean.sum()) / n, 2),
                    "robust_early_not_full": above,
                    "runs": runs,
                },
            }
        )
    return rows


def cascade_row(n: int = 100, seed: int = 0) -> Row:
    """The `transfer` preset's attacks (PGD-10, then APGD-CE) at 1/255: every attack on every
    clean-correct sample / the cascade (APGD-CE only on the PGD survivors)."""
    from clip_robust_ext.evaluation import evaluate_model
    from clip_robust_ext.evaluation.engine import build_classifier, build_dataset
    from clip_robust_ext.evaluation.protocols import get_protocol

    spec = {"dataset": "cifar10-jpegs", "split": "test"}
    plain = get_protocol("transfer", eps=["1/255"], datasets=[spec], n_samples=n, cascade=False)
    cascade = plain.with_overrides(cascade=True)
    zs = build_classifier(small_c10(), CIFAR10, plain.templates)
    ds = build_dataset(spec)
    out: dict[str, dict[str, Any]] = {}
    for name, proto in (("all", plain), ("cascade", cascade)):
        load0, cpu0, wall0 = _load(), time.process_time(), time.perf_counter()
        (rec,) = evaluate_model(zs, ds, proto, dataset_key="cifar10")
        out[name] = {
            "cpu_s": time.process_time() - cpu0,
            "wall_s": time.perf_counter() - wall0,
            "load1": [load0, _load()],
            "robust_acc": rec["robust_acc"],
            "per_attack": rec["per_attack"],
            "clean_acc": rec["clean_acc"],
        }
    a, c = out["all"], out["cascade"]
    # samples each attack ran on: APGD-CE sees the clean-correct ones, or only PGD's survivors
    clean_n = round(a["clean_acc"] * n / 100)
    pgd_survivors = round(c["per_attack"]["pgd-10"] * n / 100)
    ratio = a["cpu_s"] / c["cpu_s"]
    return {
        "section": "cascade",
        "id": "cascade_transfer_1-255",
        "figure": "worst case over attacks: every attack on every sample / cascade, CPU time",
        "setting": f"clipx-small-c10, transfer preset's PGD-10 + APGD-CE (100 it.), Linf 1/255, "
        f"{n} CIFAR-10 test images",
        "value": ratio,
        "op": "info",
        "bound": None,
        "ok": a["robust_acc"] == c["robust_acc"],
        "detail": {
            "wall_ratio": a["wall_s"] / c["wall_s"],
            "apgd_samples_all": clean_n,
            "apgd_samples_cascade": pgd_survivors,
            "runs": out,
        },
    }
