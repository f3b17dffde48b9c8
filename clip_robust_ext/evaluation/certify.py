"""The `certify` protocol: randomized-smoothing certificates next to an empirical L2 attack.

Per dataset view (seen / unseen classes, as `transfer`) and per L2 radius r in `eps`: the
certified accuracy (CERTIFY correct with radius >= r), the abstention rate, and the empirical
robust accuracy of the same smoothed classifier under PGD-L2 at r (torchattacks PGDL2 on the
expectation over noise of the base classifier's softmax, SmoothAdv's objective; the adversarial
image is then scored by the smoothed majority vote over `n` draws). A certificate bounds every
attack, so empirical accuracy below certified accuracy is a bug (the card's check).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torchattacks
from torch import nn

from ..attacks.checks import verify_adversarial
from ..cachekeys import digest, file_hash
from ..errors import ClipxUsageError
from ..utils.io import atomic_write_json
from ..utils.seeding import seed_everything
from . import records as R
from .engine import build_classifier, protocol_samples
from .protocols import Protocol, dataset_key
from .smoothing import (
    ABSTAIN,
    Certificate,
    SmoothedClassifier,
    abstention_rate,
    certified_accuracy,
)

KIND = "certified"
smoothing_module = SmoothedClassifier.__module__


class NoiseExpectation(nn.Module):
    """log E_noise[softmax(f(x + sigma * noise))] over `draws` fixed-seed noise samples: a
    differentiable stand-in for the smoothed classifier that PGD can follow (EOT)."""

    def __init__(self, base: nn.Module, sigma: float, draws: int, seed: int):
        super().__init__()
        self.base, self.sigma, self.draws, self.seed = base, sigma, draws, seed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        probs = 0
        for _ in range(self.draws):
            noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            probs = probs + self.base(x + self.sigma * noise).softmax(1)
        return torch.log(probs / self.draws + 1e-12)


@dataclass
class CertifyProtocol(Protocol):
    """Cohen et al.'s CERTIFY (sigma, n0, n_draws, alpha) at the L2 radii `eps` (norm "L2")."""

    name: str = "certify"
    sigma: float = 0.25
    n0: int = 100
    n_draws: int = 1000
    alpha: float = 0.001
    noise_batch: int = 100
    attack_steps: int = 10
    eot_draws: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm != "L2":
            raise ClipxUsageError(f"protocol '{self.name}': certificates are L2 (norm = 'L2')")
        if self.attacks:
            raise ClipxUsageError(
                f"protocol '{self.name}': the empirical attack is PGD-L2 on the smoothed "
                "classifier (attack_steps, eot_draws); attacks must be empty"
            )
        if not (isinstance(self.sigma, (int, float)) and self.sigma > 0):
            raise ClipxUsageError(f"protocol '{self.name}': sigma must be > 0")
        for attr in ("n0", "n_draws", "noise_batch", "attack_steps", "eot_draws"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ClipxUsageError(f"protocol '{self.name}': {attr} must be an integer >= 1")
        if not 0 < self.alpha < 0.5:
            raise ClipxUsageError(f"protocol '{self.name}': alpha must be in (0, 0.5)")

    def hash_settings(self) -> dict[str, Any]:
        """The smoothing and attack settings every number depends on (in the card's hash)."""
        keys = ("sigma", "n0", "n_draws", "alpha", "attack_steps", "eot_draws")
        return {k: getattr(self, k) for k in keys}

    def _store_inputs(self, loaded) -> dict[str, Any]:
        """What a stored view depends on beyond the protocol: the weights, the smoothing and attack
        settings, and the code that certifies (this module and the smoothed classifier's)."""
        code = [file_hash(sys.modules[m].__file__) for m in (__name__, smoothing_module)]
        return {
            "model": R.model_fingerprint(loaded.model),
            "smoothing": self.hash_settings(),
            "code": digest(code),
        }

    def evaluate_with(
        self, loaded, run_dir, label: str, resume: bool = True, progress: bool = True
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for spec in self.datasets:
            out.extend(self._view(loaded, run_dir, label, spec, resume))
        return out

    def _view(self, loaded, run_dir, label, spec, resume) -> list[dict[str, Any]]:
        """One view's records, reused when the settings and weights match."""
        key = dataset_key(spec)
        path = R.result_path(run_dir, label, self.name, key)
        store = self.dataset_hash(spec, self._store_inputs(loaded))
        saved = R.read_json(path) if resume else None
        if saved and saved.get("protocol_hash") == store:
            return saved["records"]
        started = time.time()
        ds, indices = protocol_samples(self, spec)
        zs = build_classifier(loaded, ds.classnames, self.templates_for(spec))
        images = torch.stack([ds[i][0] for i in indices]).to(zs.device)
        labels = [int(ds[i][1]) for i in indices]
        samples = self.score(zs, images, labels)
        records = self.summarize(samples, key, len(ds.classnames), time.time() - started)
        for rec in records:  # which classes the view scores (the card lists them)
            rec.update(label=label, seed=self.seed, class_split=getattr(ds, "description", None))
        samples = {"indices": list(indices), **samples}
        result = {"protocol_hash": store, "records": records, "samples": samples}
        atomic_write_json(path, {"schema": R.SCHEMA, "label": label, "dataset_key": key, **result})
        return records

    def score(self, zs: nn.Module, images: torch.Tensor, labels: list[int]) -> dict[str, Any]:
        """Per sample: the certificate, and per radius whether the attacked input stays correct."""
        smoothed = SmoothedClassifier(zs, len(zs.classnames), self.sigma, self.noise_batch)
        started = time.process_time()
        certs = smoothed.certify_all(images, self.n0, self.n_draws, self.alpha, self.seed)
        certify_cpu = time.process_time() - started
        empirical = {}
        for radius in self.eps:
            x_adv = self.attack(zs, images, labels, radius)
            empirical[radius_key(radius)] = self.majority_correct(smoothed, x_adv, labels)
        return {
            "labels": labels,
            "certificates": [c.to_dict() for c in certs],
            "empirical_correct": empirical,
            "cost": {"certify_cpu_s": certify_cpu, "forward_cpu_s": _forward_cpu(zs, images)},
        }

    def majority_correct(self, smoothed, images, labels: list[int]) -> list[bool]:
        """Whether the smoothed classifier's majority vote over n_draws is the true class."""
        votes = [
            smoothed.counts(x, self.n_draws, _gen(x, self.seed + i)) for i, x in enumerate(images)
        ]
        return [int(v.argmax()) == y for v, y in zip(votes, labels)]

    def attack(self, zs: nn.Module, images, labels, radius: float) -> torch.Tensor:
        """PGD-L2 at `radius` on the noise expectation of the base classifier (fp32, eval mode)."""
        if radius == 0:
            return images
        seed_everything(self.seed)
        target = NoiseExpectation(zs, self.sigma, self.eot_draws, self.seed).eval()
        steps = self.attack_steps
        pgd = torchattacks.PGDL2(target, eps=radius, alpha=2.5 * radius / steps, steps=steps)
        x_adv = pgd(images.float(), torch.tensor(labels, device=images.device))
        verify_adversarial(images, x_adv, radius, "L2", "certify/pgd-l2")
        return x_adv.detach()

    def summarize(self, samples, key: str, n_classes: int, elapsed: float) -> list[dict]:
        certs = [Certificate(**c) for c in samples["certificates"]]
        labels = samples["labels"]
        common = {
            "kind": KIND,
            "protocol": self.name,
            "dataset_key": key,
            "n": len(labels),
            "classes": n_classes,
            "sigma": self.sigma,
            "n0": self.n0,
            "n_draws": self.n_draws,
            "alpha": self.alpha,
            "norm": "L2",
            "abstain_rate": abstention_rate(certs),
            "clean_acc": certified_accuracy(certs, labels, 0.0),
            # CPU time of CERTIFY over one plain forward pass of the same images
            "cost_ratio": round(
                samples["cost"]["certify_cpu_s"] / samples["cost"]["forward_cpu_s"], 1
            ),
            "elapsed_s": round(elapsed, 3),
        }
        rows = []
        for radius in self.eps:
            hits = samples["empirical_correct"][radius_key(radius)]
            rows.append(
                {
                    **common,
                    "eps": radius,
                    "eps_str": radius_key(radius),
                    "certified_acc": certified_accuracy(certs, labels, radius),
                    "empirical_acc": 100.0 * sum(hits) / max(len(hits), 1),
                }
            )
        return rows


def radius_key(radius: float) -> str:
    """A radius as a JSON key."""
    return f"{radius:g}"


@torch.no_grad()
def _forward_cpu(zs: nn.Module, images: torch.Tensor) -> float:
    """CPU seconds of one batched forward pass over `images` (the cost unit of the ratio)."""
    started = time.process_time()
    zs(images)
    return max(time.process_time() - started, 1e-9)


def _gen(x: torch.Tensor, seed: int) -> torch.Generator:
    return torch.Generator(device=x.device).manual_seed(int(seed))


__all__ = ["ABSTAIN", "KIND", "CertifyProtocol", "NoiseExpectation", "radius_key"]
