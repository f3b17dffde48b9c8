"""Interleaved timing, medians, and the machine's load while a benchmark runs.

Every figure of the suite is a ratio of two costs measured in the same process, interleaved
round by round (A B, B A, A B ...), so slow phases of a shared machine hit both arms alike; each
arm is summarised by its median. Single-process figures use the process CPU time
(`time.process_time`, all threads of this process): with one intra-op thread it is the work done,
and it does not count the time another tenant's process held the core (wall time on a loaded
2-core machine can be twice the CPU time). Multi-process throughput (DDP) uses wall time.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
# kernel (system) CPU seconds of the last `timed` call: page faults of freshly mapped memory land
# here, so the benchmark can tell computation (user) from allocator churn (system)
LAST_SYSTEM_S = [0.0]


def timed(fn: Callable[[], Any], clock: str = "cpu") -> tuple[float, Any]:
    """(seconds, result) of one call, with the garbage collector paused during the call."""
    now = CLOCKS[clock]
    gc.disable()
    try:
        sys_start = os.times().system
        start = now()
        out = fn()
        elapsed = now() - start
        LAST_SYSTEM_S[0] = os.times().system - sys_start
        return elapsed, out
    finally:
        gc.enable()


class Samples(dict):
    """name -> seconds per call; `.system[name]`: the kernel part of each sample (CPU clock)."""

    def __init__(self, names: list[str]):
        super().__init__({n: [] for n in names})
        self.system: dict[str, list[float]] = {n: [] for n in names}

    def add(self, name: str, seconds: float, system: float) -> None:
        self[name].append(seconds)
        self.system[name].append(system)

    def user(self, name: str) -> list[float]:
        return [t - s for t, s in zip(self[name], self.system[name])]


def interleaved(
    fns: dict[str, Callable[[], Any]],
    rounds: int,
    reps: dict[str, int] | None = None,
    warmup: list[str] | None = None,
    clock: str = "cpu",
) -> Samples:
    """Seconds per call of every fn, measured round-robin: round r runs the fns in order (r even)
    or reversed (r odd), fn `k` reps[k] times in a row. `warmup` names the fns called once untimed
    first (default: all)."""
    reps = reps or {}
    names = list(fns)
    for name in names if warmup is None else warmup:
        fns[name]()
    samples = Samples(names)
    for r in range(rounds):
        gc.collect()
        for name in names if r % 2 == 0 else names[::-1]:
            for _ in range(reps.get(name, 1)):
                samples.add(name, timed(fns[name], clock)[0], LAST_SYSTEM_S[0])
    return samples


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def summary(xs: list[float], scale: float = 1.0) -> dict[str, Any]:
    """Median / min / max of `xs`, each divided by `scale` (e.g. the number of attack steps)."""
    return {
        "median_s": median(xs) / scale,
        "min_s": min(xs) / scale,
        "max_s": max(xs) / scale,
        "n": len(xs),
    }


class LoadMonitor:
    """Samples the 1-minute load average every `every_s` seconds in a daemon thread."""

    def __init__(self, every_s: float = 5.0):
        self.every_s = every_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.start_loadavg = os.getloadavg()
        self.end_loadavg: tuple[float, float, float] | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(self.every_s)

    def __enter__(self) -> LoadMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self.every_s)
        self.end_loadavg = os.getloadavg()

    def report(self) -> dict[str, Any]:
        xs = self.samples or [self.start_loadavg[0]]
        return {
            "start": [round(v, 2) for v in self.start_loadavg],
            "end": [round(v, 2) for v in (self.end_loadavg or os.getloadavg())],
            "load1_min": round(min(xs), 2),
            "load1_median": round(median(xs), 2),
            "load1_max": round(max(xs), 2),
            "samples": len(xs),
            "cpus": os.cpu_count(),
        }


def machine() -> dict[str, Any]:
    import torch

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=repo,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = "unknown", False
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "git_commit": commit + ("+dirty" if dirty else ""),
    }
