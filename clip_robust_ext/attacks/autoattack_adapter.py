"""AutoAttack as a registered image attack, with fra31's standard settings whatever the backend.

Backends (the record names the one that ran):
- "pyautoattack" (default): the PyPI packaging of fra31/auto-attack, pinned in pyproject.
- "fra31": fra31's own `autoattack` package (git install), when importable.
- "torchattacks": torchattacks' APGD/APGDT/FAB/Square run in AutoAttack's order with fra31's
  settings (100 iterations, 1 restart, 9 target classes, Square 5000 queries without its
  rescaled schedule); torchattacks' own `AutoAttack` class is NOT used, since it runs 10-step
  APGD and targets n_classes - 1 classes (TOOLKIT_APIS.md 1.3).

Settings, the same for every version (they are what fra31's `set_version('standard')` sets):
APGD-CE/DLR 1 restart, APGD-T 1 restart x min(9, C - 1) targets, FAB(-T) 1 restart x min(9, C - 1)
targets, Square 5000 queries, 100 iterations for all. fra31/pyautoattack's 'custom' version keeps
the constructor's APGD n_restarts=5 (`set_version` is skipped for it): this adapter sets it back
to 1, so `attacks=['apgd-ce', 'apgd-t']` is the FARE/RobustBench-CLIP "APGD-CE + APGD-T" setting.
version='plus' keeps fra31's plus settings (5 restarts), 'rand' its EOT-20 settings.
Sub-attacks a class count cannot support are dropped and listed in `info['dropped']`:
DLR needs >= 3 classes, targeted DLR >= 4 (so 2-class sets run APGD-CE only, like TeCoA/FARE).

The adapter works per call (a batch from the evaluation engine's DataLoader): a 10,000-image
dataset is never one tensor. Inside one call AutoAttack's own batching (`batch_size`, default
the whole call) applies, and its seed is reset at every sub-attack call exactly as in fra31, so
the result equals `AutoAttack(...).run_standard_evaluation(x, y, batch_size=...)` on the same
batch with the same seed.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

import torch
from torch import nn

from ..errors import ClipxUsageError
from ..params import checked
from ..utils.devices import model_device
from ..utils.eps import parse_eps
from .base import attack_mode

SUB_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSIONS = {
    "standard": ["apgd-ce", "apgd-t", "fab-t", "square"],
    "plus": ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"],
    "rand": ["apgd-ce", "apgd-dlr"],
}
BACKENDS = ("pyautoattack", "fra31", "torchattacks", "auto")
_MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4, "fab-t": 2}


def _version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _fra31_available() -> bool:
    try:
        import autoattack  # noqa: F401
    except ImportError:
        return False
    return hasattr(autoattack, "AutoAttack")


class AutoAttackAdapter:
    """callable(images, labels) -> adversarial images; eps/norm/backend exposed for records."""

    def __init__(
        self,
        model: nn.Module,
        eps: float | str = 8 / 255,
        norm: str = "Linf",
        version: str = "custom",
        attacks: list[str] | tuple[str, ...] | None = ("apgd-ce", "apgd-t"),
        seed: int = 0,
        device: str | torch.device | None = None,
        backend: str = "pyautoattack",
        n_target_classes: int | None = None,
        n_iter: int = 100,
        n_restarts: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        if version not in (*VERSIONS, "custom"):
            raise ClipxUsageError(
                f"autoattack: version must be one of {[*VERSIONS, 'custom']}, got {version!r}"
            )
        if backend not in BACKENDS:
            raise ClipxUsageError(f"autoattack: backend must be one of {BACKENDS}, got {backend!r}")
        if norm not in ("Linf", "L2", "L1"):
            raise ClipxUsageError(f"autoattack: norm must be Linf, L2 or L1, got {norm!r}")
        if seed is None or isinstance(seed, bool) or not isinstance(seed, int):
            raise ClipxUsageError(
                "autoattack: seed must be an explicit integer (None means wall-clock time)"
            )
        if version == "custom":
            attacks = list(attacks or [])
            bad = sorted(set(attacks) - set(SUB_ATTACKS))
            if bad or not attacks:
                raise ClipxUsageError(
                    f"autoattack: attacks must be a non-empty subset of {SUB_ATTACKS}, got {attacks}"
                )
        else:
            attacks = list(VERSIONS[version])
        if backend == "auto":
            backend = "fra31" if _fra31_available() else "pyautoattack"
        if backend == "fra31" and not _fra31_available():
            raise ClipxUsageError(
                "autoattack backend 'fra31' needs fra31's package: "
                "pip install git+https://github.com/fra31/auto-attack (or use backend='pyautoattack')"
            )
        if backend == "torchattacks" and (version in ("plus", "rand") or norm == "L1"):
            raise ClipxUsageError(
                "autoattack backend 'torchattacks' supports fra31's standard settings (Linf/L2) only"
            )
        self.model = model
        self.eps = parse_eps(eps)
        self.norm = norm
        self.version = version
        self.attacks = attacks
        self.seed = seed
        self.device = torch.device(device) if device is not None else model_device(model)
        self.backend_name = backend
        # fra31 standard: 9 target classes (5 for L1, where it also uses 5 APGD restarts)
        self.n_target_classes = int(n_target_classes or (5 if norm == "L1" else 9))
        self.n_iter = int(n_iter)
        self.n_restarts = n_restarts
        self.batch_size = batch_size
        self.info: dict[str, Any] = {}
        self._n_classes: int | None = None

    # -- what ran ---------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        dist = {
            "pyautoattack": "pyautoattack",
            "fra31": "autoattack",
            "torchattacks": "torchattacks",
        }
        return f"{self.backend_name} {_version_of(dist[self.backend_name])}"

    def settings(self, n_classes: int) -> dict[str, Any]:
        """The sub-attacks and hyper-parameters that run for a `n_classes`-way classifier."""
        run = [a for a in self.attacks if n_classes >= _MIN_CLASSES.get(a, 2)]
        dropped = [a for a in self.attacks if a not in run]
        targets = max(1, min(self.n_target_classes, n_classes - 1))
        default_restarts = 5 if self.version == "plus" or self.norm == "L1" else 1
        return {
            "attacks": run,
            "dropped": dropped,
            "n_target_classes": targets,
            "n_iter": self.n_iter,
            "apgd_restarts": self.n_restarts if self.n_restarts is not None else default_restarts,
            "n_classes": n_classes,
            "version": self.version,
            "seed": self.seed,
            "backend": self.backend,
        }

    # -- running ----------------------------------------------------------------------------
    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if images.shape[0] == 0:
            return images.detach().clone()
        with attack_mode(self.model), torch.autocast(images.device.type, enabled=False):
            x = images.detach().float().to(self.device)
            y = labels.detach().long().to(self.device)
            if self._n_classes is None:
                with torch.no_grad():
                    self._n_classes = int(self.model(x[:1]).shape[1])
            cfg = self.settings(self._n_classes)
            self.info = cfg
            bs = self.batch_size or x.shape[0]
            if self.backend_name == "torchattacks":
                return self._run_torchattacks(x, y, cfg).detach()
            adversary = self._fra31_like(cfg)
            if self.backend_name == "fra31":
                x_adv = adversary.run_standard_evaluation(x, y, bs=bs)
            else:
                x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=bs)
            return x_adv.detach()

    def _fra31_like(self, cfg: dict[str, Any]):
        """pyautoattack / fra31 AutoAttack with fra31's standard settings and an explicit seed."""
        if self.backend_name == "fra31":
            from autoattack import AutoAttack

            version = self.version if self.version != "custom" else "standard"
            aa = AutoAttack(
                self.model,
                norm=self.norm,
                eps=self.eps,
                seed=self.seed,
                verbose=False,
                version=version,
                device=self.device,
            )
        else:
            from pyautoattack import AutoAttack

            logging.getLogger("auto-attack").setLevel(logging.WARNING)
            version = self.version if self.version != "custom" else "standard"
            aa = AutoAttack(
                self.model,
                device=self.device,
                eps=self.eps,
                norm=self.norm,
                seed=self.seed,
                version=version,
            )
        # 'standard' set fra31's settings (the point of building it that way); now the list to run
        aa.attacks_to_run = list(cfg["attacks"])
        aa.version = self.version
        aa.apgd.n_restarts = cfg["apgd_restarts"]
        aa.apgd_targeted.n_target_classes = cfg["n_target_classes"]
        aa.fab.n_target_classes = cfg["n_target_classes"]
        if cfg["n_iter"] != 100:  # APGD derives its checkpoint schedule from n_iter at construction
            for sub in (aa.apgd, aa.apgd_targeted, aa.fab):
                _set_iterations(sub, cfg["n_iter"])
        return aa

    def _run_torchattacks(
        self, x: torch.Tensor, y: torch.Tensor, cfg: dict[str, Any]
    ) -> torch.Tensor:
        """fra31's order and settings with torchattacks' implementations; first success is kept."""
        import torchattacks as ta

        common = {"norm": self.norm, "eps": self.eps, "seed": self.seed}
        steps, targets = cfg["n_iter"], cfg["n_target_classes"]
        build = {
            "apgd-ce": lambda: ta.APGD(
                self.model, steps=steps, n_restarts=cfg["apgd_restarts"], loss="ce", **common
            ),
            "apgd-dlr": lambda: ta.APGD(
                self.model, steps=steps, n_restarts=cfg["apgd_restarts"], loss="dlr", **common
            ),
            # torchattacks targets n_classes - 1 classes: n_classes = targets + 1 gives fra31's count
            "apgd-t": lambda: ta.APGDT(
                self.model, steps=steps, n_restarts=1, n_classes=targets + 1, **common
            ),
            "fab": lambda: ta.FAB(
                self.model, steps=steps, n_restarts=1, n_classes=cfg["n_classes"], **common
            ),
            "fab-t": lambda: ta.FAB(
                self.model,
                steps=steps,
                n_restarts=1,
                multi_targeted=True,
                n_classes=targets + 1,
                **common,
            ),
            "square": lambda: ta.Square(
                self.model, n_queries=5000, n_restarts=1, resc_schedule=False, **common
            ),
        }
        with torch.no_grad():
            robust = self.model(x).argmax(1) == y
        x_adv = x.clone()
        for name in cfg["attacks"]:
            idx = robust.nonzero().flatten()
            if idx.numel() == 0:
                break
            adv = build[name]()(x[idx], y[idx]).detach()
            with torch.no_grad():
                fooled = self.model(adv).argmax(1) != y[idx]
            x_adv[idx[fooled]] = adv[fooled]
            robust[idx[fooled]] = False
        return x_adv

    def __repr__(self) -> str:
        return f"AutoAttack({self.backend_name}, {self.version}, {self.attacks}, eps={self.eps:.5f}, seed={self.seed})"


def _set_iterations(sub: Any, n_iter: int) -> None:
    sub.n_iter = n_iter
    if hasattr(sub, "n_iter_2"):
        sub.n_iter_orig = n_iter
        sub.n_iter_2 = max(int(0.22 * n_iter), 1)
        sub.n_iter_min = max(int(0.06 * n_iter), 1)
        sub.size_decr = max(int(0.03 * n_iter), 1)


# Registry factory: `build_attack('autoattack', zs, eps='1/255', attacks=[...], seed=0)`; its
# signature is the adapter's, so recipes check every key before anything runs
build_autoattack = checked(AutoAttackAdapter, "attack 'autoattack'")
