"""Real-size rows: a ViT-B/32-shaped CLIP (open_clip "ViT-B-32", random init: cost does not depend
on the weights) at 224 px on CPU. PGD overhead over bare image-tower passes, one naive-wrapper
cell, and the peak memory of an evaluation (fresh process).

    python -m benchmarks.run --only vitb32
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clip_robust_ext.attacks import attack_mode
from clip_robust_ext.models import LoadedCLIP, ZeroShotClassifier

from .common import CIFAR10, Row, cifar_batch, image_fb
from .timing import interleaved, median, summary

REPO = Path(__file__).resolve().parents[1]
ARCH = "ViT-B-32"


def vitb32(seed: int = 0) -> LoadedCLIP:
    from clip_robust_ext.models import load_clip

    torch.manual_seed(seed)
    return load_clip(ARCH)  # pretrained=None: random init, offline


def batch_224(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n CIFAR-10 test images upsampled (bicubic) to 224 px: the attack works at 224."""
    x, y = cifar_batch(n)
    x = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False).clamp(0, 1)
    return x, y


def pgd_overhead_vitb32(loaded, batch_size: int, steps: int, rounds: int) -> Row:
    """PGD-k through ZeroShotClassifier / k bare image-tower forward+backward passes, at 224."""
    from .bench_attacks import _pgd

    zs = ZeroShotClassifier(loaded, CIFAR10).eval()
    zs.class_matrix()
    x, y = batch_224(batch_size)
    attack = _pgd(zs, steps)
    fb = image_fb(zs, x, steps)
    load0 = os.getloadavg()[0]
    with attack_mode(zs):
        s = interleaved({"pgd": lambda: attack(x, y), "fb": fb}, rounds)
    ratio = median(s["pgd"]) / median(s["fb"])
    return {
        "section": "vitb32",
        "id": f"vitb32_pgd_overhead_bs{batch_size}",
        "figure": f"PGD-{steps} via ZeroShotClassifier / ({steps} x bare image fwd+bwd)",
        "setting": f"ViT-B/32 (random init), 224 px, batch {batch_size}, 10 classes, 1 template",
        "value": ratio,
        "op": "info",
        "bound": None,
        "ok": None,
        "detail": {
            "pgd": summary(s["pgd"], steps),
            "image_fb": summary(s["fb"], steps),
            "images_per_s_pgd_step": batch_size / (median(s["pgd"]) / steps),
            "load1": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "params_m": sum(p.numel() for p in loaded.model.parameters()) / 1e6,
        },
    }


def naive_cell_vitb32(loaded, n_classes: int, n_templates: int, batch_size: int) -> list[Row]:
    """One cached-vs-naive cell of the naive grid (benchmarks/naive.py) on ViT-B/32. The CIFAR
    images are upsampled to 224 inside the model, as for any 32 px input."""
    from .bench_attacks import naive_group

    load0 = os.getloadavg()[0]
    rows = naive_group(loaded, n_classes, n_templates, [batch_size], {batch_size: 2}, 6.0)
    for r in rows:
        r["id"] = "vitb32_" + r["id"]
        r["setting"] = "ViT-B/32 (random init), " + r["setting"]
        r["detail"]["load1"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    return rows


class _Relabelled(torch.utils.data.Dataset):
    """A dataset with the labels replaced (the random model's own predictions, so that every
    sample is clean-correct and attacked: the memory of the attack is what is measured)."""

    def __init__(self, dataset, labels: torch.Tensor):
        self.dataset, self.labels, self.classnames = dataset, labels, dataset.classnames

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.dataset[i][0], int(self.labels[i])


def _memory_worker(n: int, batch_size: int, steps: int, out: Path) -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.bench_memory import _malloc_trim, _measured, _peak_mib, _rss_mib
    from benchmarks.common import setup_env

    setup_env()
    from clip_robust_ext.data import ProceduralShapes
    from clip_robust_ext.evaluation.engine import build_classifier, evaluate_model
    from clip_robust_ext.evaluation.protocols import Protocol

    loaded = vitb32()
    data = ProceduralShapes("test", n=n + batch_size, seed=0, image_size=224)
    zs = build_classifier(loaded, data.classnames, ["This is a photo of a {}"])
    with torch.no_grad():
        preds = torch.cat(
            [
                zs(torch.stack([data[i][0] for i in range(b, min(b + 32, len(data)))])).argmax(1)
                for b in range(0, len(data), 32)
            ]
        )
    every = _Relabelled(data, preds)
    protocol = Protocol(
        name="bench-memory-vitb32",
        attacks=[
            {"name": "pgd", "label": f"pgd-{steps}", "params": {"steps": steps, "alpha": "eps"}}
        ],
        eps=["1/255"],
        templates=["This is a photo of a {}"],
        datasets=["procedural-shapes"],
        batch_size=batch_size,
        early_exit=False,  # every sample runs every step: the worst case for memory
    )
    warm = list(range(n, n + batch_size))
    evaluate_model(zs, every, protocol, indices=warm)  # allocator, caches
    m = _measured(lambda: evaluate_model(zs, every, protocol, indices=list(range(n))))
    peak = _peak_mib()
    gc.collect()
    _malloc_trim()
    params_mib = sum(p.numel() * p.element_size() for p in loaded.model.parameters()) / 2**20
    out.write_text(
        json.dumps(
            {
                "n": n,
                "batch_size": batch_size,
                "steps": steps,
                "clean_acc": m["records"][0]["clean_acc"],
                "rss_before_mib": m["before_rss"],
                "peak_mib": peak,
                "peak_reset": m["reset"],
                "growth_mib": max(0.0, peak - m["before_rss"]),
                "python_heap_peak_mib": m["py_peak"],
                "rss_after_malloc_trim_mib": _rss_mib(),
                "params_mib": params_mib,
                "batch_images_mib": batch_size * 3 * 224 * 224 * 4 / 2**20,
                "cpu_s": m["seconds"],
            }
        )
    )


def memory_row_vitb32(n: int, batch_size: int, steps: int, timeout: float = 1800) -> Row:
    """Peak RSS of an evaluation (PGD-k on every sample) in a fresh process, over the RSS
    just before it (model loaded, a warm-up batch done)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="clipx-bench-vitb32-") as tmp:
        out = Path(tmp) / "mem.json"
        cmd = [sys.executable, "-m", "benchmarks.bench_vitb32", "--memory-worker", str(out)]
        cmd += ["--n", str(n), "--batch-size", str(batch_size), "--steps", str(steps)]
        done = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"ViT-B/32 memory worker failed: {done.stderr[-2000:]}")
        d: dict[str, Any] = json.loads(out.read_text())
    d["load1"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    return {
        "section": "vitb32",
        "id": f"vitb32_eval_peak_memory_bs{batch_size}",
        "figure": "evaluation peak RSS growth (MiB) over the RSS before it",
        "setting": f"ViT-B/32 (random init), 224 px, PGD-{steps} on all {n} samples, "
        f"batch {batch_size}, fresh process",
        "value": d["growth_mib"],
        "op": "info",
        "bound": None,
        "ok": None,
        "detail": d,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--memory-worker", type=Path, required=True)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args()
    _memory_worker(args.n, args.batch_size, args.steps, args.memory_worker)


if __name__ == "__main__":
    main()
