"""Memory of a 10,000-image evaluation: it must stream, not hold the dataset.

Each measurement runs in a fresh process (`python -m benchmarks.bench_memory --worker ...`): it
loads the model, runs a small warm-up evaluation (allocator, caches), resets the kernel's peak-RSS
mark (`/proc/self/clear_refs` <- 5, Linux >= 4.0), evaluates n images and reads the peak
(`VmHWM`): growth = peak during the evaluation - RSS just before it. Where the mark cannot be
reset, the process-lifetime peak (`ru_maxrss`) is used instead and said so. tracemalloc reports
the Python-heap peak (per-sample result strings, lists), which RSS alone would hide.

glibc's malloc keeps freed memory (its mmap threshold rises after large frees, and tensors of
varying size - the clean-correct subset of each batch - fragment the heap), so the default RSS
peak grows with n although every batch is freed: `malloc_trim(0)` after the evaluation gives it
back (reported). The streaming figure is therefore measured with MALLOC_MMAP_THRESHOLD_=65536,
where every allocation >= 64 KiB is its own mapping and RSS follows live memory: memory per extra
image = (growth(n_large) - growth(n_small)) / (bytes(n_large) - bytes(n_small)), ~0 when the
evaluation streams and 1 when it holds every image as float32.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> bool:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def _peak_mib() -> float:
    hwm = _status_mib("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(kind: str, n: int, attack: str | None, out: Path) -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.common import setup_env

    setup_env()
    from clip_robust_ext.evaluation.engine import evaluate, evaluate_model
    from clip_robust_ext.evaluation.protocols import Protocol
    from clip_robust_ext.registry import get

    attacks = [{"name": attack, "label": attack}] if attack else []
    if kind == "procedural":
        from clip_robust_ext.data import ProceduralShapes
        from clip_robust_ext.evaluation.engine import build_classifier

        loaded = get("models", "procedural-small").obj(progress=False)
        protocol = Protocol(
            name="bench-memory",
            attacks=attacks,
            eps=["1/255"],
            seed=0,
            templates=["This is a photo of a {}"],
            datasets=["procedural-shapes"],
            batch_size=256,
        )
        data = ProceduralShapes("test", n=n, seed=0)
        image_bytes = n * 3 * data.image_size**2 * 4
        zs = build_classifier(loaded, data.classnames, protocol.templates)
        evaluate_model(zs, ProceduralShapes("test", n=512, seed=1), protocol)  # warm-up
        reset = _reset_peak()
        before_peak, before_rss = _peak_mib(), _rss_mib()
        tracemalloc.start()
        start = time.process_time()
        records = evaluate_model(zs, data, protocol)
        seconds = time.process_time() - start
        py_peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        entry = "engine.evaluate_model (DataLoader over ProceduralShapes, generated per item)"
    else:  # the CIFAR-10 test JPEGs through evaluate(): result files, resume bookkeeping
        loaded = get("models", "clipx-small-c10").obj()
        protocol = Protocol(
            name="bench-memory",
            attacks=attacks,
            eps=["1/255"],
            seed=0,
            templates=["This is a photo of a {}"],
            datasets=[{"dataset": "cifar10-jpegs", "n": n}],
            batch_size=256,
        )
        warm = protocol.with_overrides(datasets=[{"dataset": "cifar10-jpegs", "n": 512}])
        image_bytes = n * 3 * 32 * 32 * 4
        with tempfile.TemporaryDirectory(prefix="clipx-bench-mem-") as run_dir:
            evaluate(loaded, warm, run_dir, label="warm", progress=False)
            reset = _reset_peak()
            before_peak, before_rss = _peak_mib(), _rss_mib()
            tracemalloc.start()
            start = time.process_time()
            records = evaluate(loaded, protocol, run_dir, label="bench", progress=False)
            seconds = time.process_time() - start
            py_peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        entry = "engine.evaluate (cifar10-jpegs: compressed bytes in memory, decoded per item)"
    after_peak = _peak_mib()
    gc.collect()
    rss_end = _rss_mib()
    trimmed = _malloc_trim()
    rss_trim = _rss_mib()
    out.write_text(
        json.dumps(
            {
                "kind": kind,
                "entry": entry,
                "n": records[0]["n"],
                "attack": attack,
                "clean_acc": records[0]["clean_acc"],
                "peak_before_mib": before_peak,
                "rss_before_mib": before_rss,
                "peak_after_mib": after_peak,
                "peak_reset": reset,
                "growth_mib": max(0.0, after_peak - (before_rss if reset else before_peak)),
                "python_heap_peak_mib": py_peak,
                "rss_end_mib": rss_end,
                "rss_after_malloc_trim_mib": rss_trim if trimmed else None,
                "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
                "dataset_as_tensor_mib": image_bytes / 2**20,
                "cpu_s": seconds,
            }
        )
    )


def measure(
    kind: str, n: int, attack: str | None = None, live: bool = False, timeout: float = 900
) -> dict[str, Any]:
    """One worker process; live=True: MALLOC_MMAP_THRESHOLD_=65536 (RSS follows live memory)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if live:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    with tempfile.TemporaryDirectory(prefix="clipx-bench-mem-") as tmp:
        out = Path(tmp) / "mem.json"
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.bench_memory",
            "--worker",
            kind,
            "--n",
            str(n),
            "--out",
            str(out),
        ]
        if attack:
            cmd += ["--attack", attack]
        done = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"memory worker failed: {done.stderr[-2000:]}")
        return json.loads(out.read_text())


def memory_rows(kind: str, attack: str | None, n_small: int, n_large: int, bound: float) -> list:
    """Two figures per setting, each evaluation in a fresh process:
    - peak RSS growth of the n_large evaluation / the n_large images as one float32 tensor, with
      glibc's default malloc (what a user sees; includes one batch's working set and what
      malloc keeps; the RSS after malloc_trim(0) is in the details);
    - memory per extra image from n_small to n_large with RSS following live memory (bound)."""
    default = measure(kind, n_large, attack)
    small, large = (
        measure(kind, n_small, attack, live=True),
        measure(kind, n_large, attack, live=True),
    )
    ratio = default["growth_mib"] / default["dataset_as_tensor_mib"]
    marginal = (large["growth_mib"] - small["growth_mib"]) / (
        large["dataset_as_tensor_mib"] - small["dataset_as_tensor_mib"]
    )
    model = "procedural-small" if kind == "procedural" else "clipx-small-c10"
    data = "procedural-shapes" if kind == "procedural" else "cifar10-jpegs test"
    entry = "evaluate_model" if kind == "procedural" else "evaluate (files)"
    setting = f"{data}, {model}, {attack or 'clean'}, batch 256, engine.{entry}"
    tag = f"memory_{kind}" + (f"_{attack}" if attack else "")
    return [
        {
            "section": "memory",
            "id": f"{tag}_growth",
            "figure": f"peak RSS growth of a {n_large:,}-image evaluation / the images as float32",
            "setting": setting + ", glibc malloc defaults",
            "value": ratio,
            "op": "info",
            "bound": None,
            "ok": None,
            "detail": {
                **default,
                "growth_live_mib": large["growth_mib"],
                "growth_live_over_images": large["growth_mib"] / large["dataset_as_tensor_mib"],
            },
        },
        {
            "section": "memory",
            "id": f"{tag}_per_image",
            "figure": f"memory per extra image (n {n_small:,} -> {n_large:,}) / bytes per image",
            "setting": setting + ", RSS = live memory",
            "value": marginal,
            "op": "<=",
            "bound": bound,
            "ok": marginal <= bound,
            "detail": {"small": small, "large": large},
        },
    ]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", choices=("procedural", "cifar"), required=True)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--attack", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    worker(args.worker, args.n, args.attack, Path(args.out))


if __name__ == "__main__":
    main()
