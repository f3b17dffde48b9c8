"""GPU check, for whoever has a GPU: PGD-100 on a ViT-B/32-shaped CLIP at batch 256.

    export CLIPX_ASSETS=/path/to/shared/assets
    python -m benchmarks.gpu_check --json gpu_check.json             # ~5 min on one recent GPU
    python -m benchmarks.gpu_check --device cpu --quick              # smoke test of the script

Measures, on one device, and writes every number to --json:
1. PGD-100 throughput (adversarial images/s) and overhead: PGD-100 through ZeroShotClassifier
   / 100 bare image-tower forward+backward passes, ViT-B/32 (random init unless --pretrained),
   224 px, batch 256, fp32 (clipx's attack precision), interleaved repeats, CUDA-synchronised.
2. bf16 vs fp32 attack agreement: the same PGD (same seed, torchattacks.PGD's iteration) run in
   fp32 and under bf16 autocast; the fraction of samples with the same robust/broken outcome,
   both robust accuracies, and the mean |x_adv_bf16 - x_adv_fp32| / eps. Meaningful on a trained
   model only: clipx-small-c10 on CIFAR-10 (always), and ViT-B/32 when --pretrained is given.
3. Early-exit speedup: PGD-100 full length (torchattacks) / early exit (clipx EarlyExitPGD) on
   clipx-small-c10, 500 CIFAR-10 test images, 1/255 and 4/255, with both robust accuracies.

The CPU run of (3) is the `early_exit` row of `python -m benchmarks.run`. No GPU numbers are
claimed in the docs until someone has run this and committed its JSON under results/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _wall(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _interleaved(fns: dict[str, Any], rounds: int, device: torch.device) -> dict[str, list[float]]:
    for fn in fns.values():  # warm-up (kernels, allocator)
        fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for name in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            out[name].append(_wall(fns[name], device))
    return out


def _median(xs: list[float]) -> float:
    import statistics

    return float(statistics.median(xs))


def throughput(loaded, device, batch_size: int, steps: int, rounds: int) -> dict[str, Any]:
    """PGD-`steps` images/s and its overhead over bare image-tower fwd+bwd passes."""
    from benchmarks.bench_vitb32 import batch_224
    from benchmarks.common import CIFAR10, image_fb
    from clip_robust_ext.attacks import attack_mode, build_attack
    from clip_robust_ext.models import ZeroShotClassifier

    zs = ZeroShotClassifier(loaded, CIFAR10).to(device).eval()
    zs.class_matrix()
    x, y = batch_224(batch_size)
    x, y = x.to(device), y.to(device)
    attack = build_attack("pgd", zs, eps=1 / 255, alpha=1 / 255, steps=steps)
    fb = image_fb(zs, x, steps)
    with attack_mode(zs):
        s = _interleaved({"pgd": lambda: attack(x, y), "fb": fb}, rounds, device)
    t_pgd, t_fb = _median(s["pgd"]), _median(s["fb"])
    return {
        "batch_size": batch_size,
        "steps": steps,
        "pgd_s": s["pgd"],
        "bare_fb_s": s["fb"],
        "images_per_s": batch_size / t_pgd,
        "overhead_ratio": t_pgd / t_fb,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else None,
    }


def agreement(zs, x, y, eps: float, steps: int, device) -> dict[str, Any]:
    """The same PGD in fp32 and under bf16 autocast, same seed: how often the outcome agrees."""
    from clip_robust_ext.api import EarlyExitPGD

    attack = EarlyExitPGD(zs, eps=eps, alpha=eps / 4, steps=steps, early_exit=False)
    torch.manual_seed(0)
    adv32 = attack(x, y)  # fp32: autocast disabled inside
    torch.manual_seed(0)
    from clip_robust_ext.attacks import attack_mode

    with attack_mode(zs), torch.autocast(device.type, dtype=torch.bfloat16):
        adv16 = attack._run(x.float(), y).float()  # the same iteration, bf16 autocast
    with torch.no_grad():
        r32 = zs(adv32).argmax(1) == y
        r16 = zs(adv16).argmax(1) == y
    return {
        "n": len(y),
        "eps": eps,
        "steps": steps,
        "same_outcome": float((r32 == r16).float().mean()),
        "robust_acc_fp32": 100 * float(r32.float().mean()),
        "robust_acc_bf16": 100 * float(r16.float().mean()),
        "mean_abs_diff_over_eps": float((adv16 - adv32).abs().mean() / eps),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__)
    p.add_argument("--device", default="cuda")
    p.add_argument("--pretrained", default=None, help="ViT-B-32 weights (open_clip tag or file)")
    p.add_argument("--json", default="gpu_check.json")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device; use --device cpu --quick for a smoke test")
    from benchmarks.bench_evaluation import early_exit_rows
    from benchmarks.common import CIFAR10, cifar_batch, small_c10
    from clip_robust_ext.evaluation.engine import build_classifier
    from clip_robust_ext.models import load_clip
    from clip_robust_ext.utils.versions import versions

    q = args.quick
    torch.manual_seed(0)
    vit = load_clip("ViT-B-32", pretrained=args.pretrained, device=device)
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "versions": versions(),
        "pretrained": args.pretrained,
        "quick": q,
    }
    out["throughput"] = throughput(vit, device, 4 if q else 256, 2 if q else 100, 1 if q else 3)
    print(json.dumps(out["throughput"], indent=1), flush=True)

    small = small_c10()
    small.model.to(device)
    zs = build_classifier(small, CIFAR10, ["This is a photo of a {}"])
    x, y = cifar_batch(16 if q else 500)
    x, y = x.to(device), y.to(device)
    out["agreement"] = {"clipx-small-c10": agreement(zs, x, y, 1 / 255, 5 if q else 100, device)}
    if args.pretrained:
        vzs = build_classifier(vit, CIFAR10, ["This is a photo of a {}"])
        out["agreement"]["ViT-B-32"] = agreement(
            vzs, x[:256], y[:256], 1 / 255, 5 if q else 100, device
        )
    print(json.dumps(out["agreement"], indent=1), flush=True)

    if device.type == "cpu" or q:
        rows = early_exit_rows(n=16, eps_list=("4/255",), steps=5, batch_size=16)
    else:
        rows = early_exit_rows(batch_size=500, device=device)
    out["early_exit"] = [{"id": r["id"], "setting": r["setting"], **r["detail"]} for r in rows]
    Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
