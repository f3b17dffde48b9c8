"""Attack-strength checks: is the reported robustness real, or did the attack fail?

The gradient-masking checklist of Athalye et al. (2018) and Carlini et al. (2019), and the flags
AutoAttack raises (its own `checks` functions are used where they exist). Two kinds:

- from the results (free): robust accuracy not monotone in eps, robust not below clean (no
  prediction changed at eps > 0), a stronger attack (more steps / restarts / EOT draws, APGD over
  PGD, AutoAttack) more than TOL points less successful than a weaker one, a pipeline the engine
  found non-deterministic evaluated under a protocol that declares it deterministic, a black-box attack (Square) more successful than the white-box ones, a large
  eps (>= 16/255) that leaves accuracy far from 0 (skipped for certified models);
- a probe on `checks_n` inputs of the first dataset (protocol `checks = "basic"`): zero or
  non-finite input gradients, a randomised model (AutoAttack's check), the attack loss not rising
  over the iterations; with `checks = "full"` also Square and the first white-box attack at
  16/255 on those inputs (extra attacks, so not in every protocol's default cost).

Comparisons are like with like: each evaluated pipeline (record label: a model, or a model behind
a test-time defense) with itself, and an attack with attacks of the same mode.

Every check is pass / fail / skipped with a one-line reason; failures print as warnings, and
`checks_strict = true` turns them into an error (after the card is written).
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

import torch
import torch.nn.functional as F

from ..attacks import attack_mode, verify_adversarial
from ..data.checks import collate_labelled
from ..errors import ClipxError
from ..registry import get
from .engine import build_classifier, derive_seed, plan_attacks, protocol_samples
from .protocols import Protocol, eps_label

TOL = 1.0  # points of accuracy a comparison may miss by before it fails
LARGE_EPS = 16 / 255
NEAR_ZERO = 10.0  # percent: "accuracy at a large eps is near 0"
LOSS_RISE = 0.05  # the attack loss must rise by at least 5% of its start over the iterations
BLACK_BOX = {"square"}
SQUARE_QUERIES = 1000  # Square's budget on the probe inputs (AutoAttack's own: 5000)
_KIND = {"fgsm": 0, "ffgsm": 0, "rfgsm": 0, "apgd": 2, "apgdt": 2, "autoattack": 3}
_NOT_IMAGE_WHITE_BOX = BLACK_BOX | {"text-attack", "multimodal"}


def _check(name: str, status: str, detail: str, **data: Any) -> dict[str, Any]:
    return {"name": name, "status": status, "detail": detail, **data}


# -- checks on the results ------------------------------------------------------------------------
def _where(r: dict[str, Any]) -> str:
    """A record's pipeline and dataset: '<label> <dataset>' (the dataset alone without a label)."""
    return " ".join(str(v) for v in (r.get("label"), r.get("dataset_key")) if v is not None)


def _by_dataset(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Budgeted records per (pipeline, dataset), in eps order: undefended and defended rows of
    one evaluation are separate series."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("eps") is not None:
            out.setdefault(_where(r), []).append(r)
    return {k: sorted(v, key=lambda r: r["eps"]) for k, v in out.items()}


def check_monotone(records: list[dict[str, Any]]) -> dict[str, Any]:
    bad = []
    for key, rows in _by_dataset(records).items():
        series = {"robust": [r.get("robust_acc") for r in rows]}
        for r in rows:
            for a, v in (r.get("per_attack") or {}).items():
                series.setdefault(a, []).append(v)
        for what, vals in series.items():
            for i in range(1, len(vals)):
                if None not in (vals[i], vals[i - 1]) and vals[i] > vals[i - 1] + TOL:
                    e0, e1 = rows[i - 1]["eps_str"], rows[i]["eps_str"]
                    bad.append(f"{key} {what}: {vals[i - 1]:.1f} at {e0} -> {vals[i]:.1f} at {e1}")
    n_eps = max((len(v) for v in _by_dataset(records).values()), default=0)
    if n_eps < 2:
        return _check("eps_monotone", "skipped", "one eps only")
    if bad:
        return _check("eps_monotone", "fail", "accuracy rises with eps: " + "; ".join(bad[:3]))
    return _check("eps_monotone", "pass", f"non-increasing over {n_eps} eps (tolerance {TOL})")


def _not_below_clean(r: dict[str, Any]) -> bool:
    """robust > clean (impossible for one deterministic pipeline: a sample counts as robust only
    if it was clean-correct), or robust == clean > 0 at an eps > 0: the attack changed not one
    prediction, the first sign of masked gradients or of a randomized pipeline."""
    robust, clean, eps = r.get("robust_acc"), r.get("clean_acc"), r.get("eps")
    if robust is None or clean is None:
        return False
    return robust > clean or (robust == clean and clean > 0 and eps is not None and eps > 0)


def check_robust_le_clean(records: list[dict[str, Any]]) -> dict[str, Any]:
    bad = [
        f"{_where(r)} @ {r['eps_str']}: robust {r['robust_acc']:.1f} >= clean {r['clean_acc']:.1f}"
        for r in records
        if _not_below_clean(r)
    ]
    if not any(r.get("robust_acc") is not None for r in records):
        return _check("robust_le_clean", "skipped", "no attacks")
    if bad:
        return _check("robust_le_clean", "fail", "; ".join(bad[:3]))
    return _check("robust_le_clean", "pass", "robust < clean at every eps > 0")


def check_determinism(records: list[dict[str, Any]], protocol: Protocol) -> dict[str, Any]:
    """A pipeline the engine found non-deterministic (records' `pipeline`) must be evaluated
    with EOT and several final draws: eot_samples = 1 or final_draws = 1 declares determinism."""
    random = sorted(
        {_where(r) for r in records if (r.get("pipeline") or {}).get("deterministic") is False}
    )
    if not any("pipeline" in r for r in records):
        return _check("determinism", "skipped", "no determinism probe in these records")
    if not random:
        return _check("determinism", "pass", "every evaluated pipeline is deterministic")
    names = ", ".join(random[:3])
    if protocol.eot_samples == 1 or protocol.final_draws == 1:
        return _check(
            "determinism",
            "fail",
            f"not deterministic: {names}; the protocol declares determinism (eot_samples = "
            f"{protocol.eot_samples}, final_draws = {protocol.final_draws})",
            pipelines=random,
        )
    return _check(
        "determinism",
        "pass",
        f"not deterministic: {names}; evaluated with EOT-{protocol.eot_samples}, early exit "
        f"off, worst of {protocol.final_draws} final draws",
        pipelines=random,
    )


def _steps(desc: dict[str, Any]) -> int:
    p = desc.get("params") or {}
    if desc["name"] in ("fgsm", "ffgsm", "rfgsm"):
        return 1
    return int(
        p.get("steps", p.get("n_iter", 100 if desc["name"] in ("apgd", "autoattack") else 10))
    )


def _restarts(desc: dict[str, Any]) -> int:
    p = desc.get("params") or {}
    return int(p.get("restarts", p.get("n_restarts", 1)))


def _eot_draws(desc: dict[str, Any]) -> int:
    p = desc.get("params") or {}
    return int(p.get("eot_samples", p.get("eot_iter", 1)))


def stronger(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Is image attack `a` at least as strong as `b` in every respect and stronger in one: its
    kind (FGSM < PGD-like < APGD < AutoAttack), steps, restarts, EOT draws? Attacks of different
    test-time modes (adaptive / non-adaptive) are not compared."""
    ka, kb = _KIND.get(a["name"], 1), _KIND.get(b["name"], 1)
    if (a["name"] != b["name"] and ka == kb) or a.get("mode") != b.get("mode"):
        return False  # two different attacks of one kind, or of two modes: no order
    sa = (ka, _steps(a), _restarts(a), _eot_draws(a))
    sb = (kb, _steps(b), _restarts(b), _eot_draws(b))
    return all(x >= y for x, y in zip(sa, sb)) and sa != sb


def _white_box(desc: dict[str, Any]) -> bool:
    return desc.get("modality", "image") == "image" and desc["name"] not in _NOT_IMAGE_WHITE_BOX


def check_stronger(records: list[dict[str, Any]], cascade: bool) -> dict[str, Any]:
    if cascade:
        return _check("stronger_attack", "skipped", "cascade: per-attack numbers are cumulative")
    bad, pairs = [], 0
    for r in records:
        descs = [d for d in r.get("attacks") or [] if _white_box(d)]
        acc = r.get("per_attack") or {}
        for a in descs:
            for b in descs:
                if a is b or not stronger(a, b):
                    continue
                pairs += 1
                va, vb = acc.get(a["label"]), acc.get(b["label"])
                if None not in (va, vb) and va > vb + TOL:
                    bad.append(
                        f"{_where(r)} @ {r['eps_str']}: {a['label']} {va:.1f} > "
                        f"weaker {b['label']} {vb:.1f}"
                    )
    if not pairs:
        return _check("stronger_attack", "skipped", "no pair of attacks with a strength order")
    if bad:
        return _check("stronger_attack", "fail", "; ".join(bad[:3]))
    return _check("stronger_attack", "pass", f"{pairs} ordered pairs agree (tolerance {TOL})")


def _black_box_vs_white(
    name: str, rows: list[tuple[str, float, dict[str, float]]]
) -> dict[str, Any]:
    """rows: (where, black-box accuracy, {white-box label: accuracy})."""
    if not rows:
        return _check(name, "skipped", "no black-box attack run (checks = 'full' runs Square)")
    bad = [
        f"{where}: black-box {bb:.1f} < white-box {min(wb.values()):.1f}"
        for where, bb, wb in rows
        if wb and bb < min(wb.values()) - TOL
    ]
    if bad:
        return _check(name, "fail", "; ".join(bad[:3]))
    return _check(name, "pass", f"black-box >= white-box - {TOL} in {len(rows)} comparisons")


def blackbox_rows(records: list[dict[str, Any]]) -> list[tuple[str, float, dict[str, float]]]:
    rows = []
    for r in records:
        descs = r.get("attacks") or []
        acc = r.get("per_attack") or {}
        white = {d["label"]: acc[d["label"]] for d in descs if _white_box(d) and d["label"] in acc}
        for d in descs:
            if d["name"] in BLACK_BOX and d["label"] in acc and white:
                rows.append((f"{r.get('dataset_key')} @ {r['eps_str']}", acc[d["label"]], white))
    return rows


def large_eps_rows(records: list[dict[str, Any]]) -> list[tuple[str, float]]:
    return [
        (f"{r.get('dataset_key')} @ {r['eps_str']}", r["robust_acc"])
        for r in records
        if r.get("eps") is not None
        and r["eps"] >= LARGE_EPS - 1e-9
        and r.get("robust_acc") is not None
    ]


def _large_eps(rows: list[tuple[str, float]], certified: bool) -> dict[str, Any]:
    if certified:
        return _check("large_eps", "skipped", "certified model: bounded accuracy is expected")
    if not rows:
        return _check("large_eps", "skipped", "no eps >= 16/255 run (checks = 'full' runs one)")
    bad = [f"{where}: {acc:.1f}%" for where, acc in rows if acc > NEAR_ZERO]
    if bad:
        return _check(
            "large_eps", "fail", f"accuracy not near 0 (> {NEAR_ZERO}%): " + "; ".join(bad[:3])
        )
    return _check("large_eps", "pass", f"<= {NEAR_ZERO}% at large eps in {len(rows)} results")


# -- the probe --------------------------------------------------------------------------------------
class _Collect(logging.Logger):
    """A logger that keeps AutoAttack's check warnings instead of printing them."""

    def __init__(self) -> None:
        super().__init__("clipx.checks")
        self.messages: list[str] = []

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self.messages.append(str(msg))


def _probe_inputs(loaded: Any, protocol: Protocol):

    spec = protocol.datasets[0]
    ds, indices = protocol_samples(protocol, spec)
    idx = indices[: protocol.checks_n]
    x, y = collate_labelled([ds[i] for i in idx], what="checks")
    zs = build_classifier(loaded, ds.classnames, protocol.templates_for(spec)).eval()
    device = zs.device
    return zs, x.to(device=device, dtype=torch.float32), y.to(device), spec


def check_gradients(zs: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    from pyautoattack.checks import check_zero_gradients

    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(zs(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    if grad is None:
        return _check("gradients", "fail", "the loss does not depend on the input (no gradient)")
    log = _Collect()
    check_zero_gradients(grad, logger=log)
    flat = grad.flatten(1)
    zero = int((flat.abs().sum(1) == 0).sum())
    bad = int((~torch.isfinite(flat)).any(1).sum())
    data = {"zero": zero, "non_finite": bad, "n": len(x)}
    if zero or bad:
        return _check(
            "gradients", "fail", f"{zero} zero / {bad} non-finite of {len(x)} inputs", **data
        )
    return _check(
        "gradients", "pass", f"non-zero, finite input gradients on {len(x)} inputs", **data
    )


def check_randomized(zs: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    from pyautoattack.checks import check_randomized as aa_check

    log = _Collect()
    aa_check(zs, x, y, bs=len(x), logger=log)
    if log.messages:
        return _check(
            "randomized",
            "fail",
            "outputs differ between forward passes of the same inputs (AutoAttack: use "
            "version='rand', EOT)",
        )
    return _check("randomized", "pass", "5 forward passes agree (AutoAttack's check)")


def _image_attack(protocol: Protocol, white_box: bool = True) -> dict[str, Any]:
    """The protocol's first white-box image attack, or PGD-10 (step eps/4) when it has none."""

    for spec in protocol.attacks:
        modality = get("attacks", spec["name"]).modality or "image"
        if modality == "image" and spec["name"] not in _NOT_IMAGE_WHITE_BOX:
            return spec
    return {
        "name": "pgd",
        "label": "pgd-10",
        "params": {"steps": 10, "alpha": "eps/4", "random_start": True},
    }


def _run_attack(
    zs: Any, protocol: Protocol, spec: dict[str, Any], eps: float, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """`spec` at `eps` on (x, y) with the evaluation's seeds and checks; returns the images."""

    single = protocol.with_overrides(attacks=[spec], eps=[eps], checks="off")
    (planned,) = plan_attacks(zs, single, "checks")
    torch.manual_seed(derive_seed(protocol.seed, "checks", planned.key))
    with attack_mode(zs):
        adv = planned.attack(x, y).images
    verify_adversarial(x, adv, eps, protocol.norm, planned.label)
    return adv


def check_loss_rises(
    zs: Any, protocol: Protocol, x: torch.Tensor, y: torch.Tensor
) -> dict[str, Any]:
    """Record the mean cross-entropy at every forward pass the attack makes on the whole batch
    (a hook on the classifier): a working attack drives it up."""
    spec = _image_attack(protocol)
    eps = max(protocol.eps)
    losses: list[float] = []

    def hook(module: Any, args: Any, out: torch.Tensor) -> None:
        if out.shape[0] == len(y):
            losses.append(float(F.cross_entropy(out.detach().float(), y)))

    handle = zs.register_forward_hook(hook)
    try:
        adv = _run_attack(zs, protocol, spec, eps, x, y)
    finally:
        handle.remove()
    with torch.no_grad():
        losses.append(float(F.cross_entropy(zs(adv).float(), y)))
    start, end = losses[0], losses[-1]
    curve = [round(v, 4) for v in losses]
    where = f"{spec['label']} at {eps_label(eps)}"
    if not all(math.isfinite(v) for v in losses):
        return _check("loss_rises", "fail", f"{where}: non-finite loss", curve=curve)
    if end - start < LOSS_RISE * max(abs(start), 1e-3):
        return _check(
            "loss_rises",
            "fail",
            f"{where}: loss {start:.3f} -> {end:.3f} (rise < {LOSS_RISE:.0%})",
            curve=curve,
        )
    return _check("loss_rises", "pass", f"{where}: loss {start:.3f} -> {end:.3f}", curve=curve)


def _accuracy(zs: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return round(100.0 * float((zs(x).argmax(1) == y).float().mean()), 4)


def probe_full(
    zs: Any, protocol: Protocol, x: torch.Tensor, y: torch.Tensor, where: str
) -> tuple[list[tuple[str, float, dict[str, float]]], list[tuple[str, float]]]:
    """Square and the first white-box attack on the probe inputs at the largest eps, and that
    white-box attack at 16/255: rows for the black-box and large-eps checks."""
    spec = _image_attack(protocol)
    eps = max(protocol.eps)
    square = {
        "name": "square",
        "label": "square",
        "params": {"n_queries": SQUARE_QUERIES, "seed": 0},
    }
    acc_w = _accuracy(zs, _run_attack(zs, protocol, spec, eps, x, y), y)
    acc_s = _accuracy(zs, _run_attack(zs, protocol, square, eps, x, y), y)
    acc_l = _accuracy(zs, _run_attack(zs, protocol, spec, max(LARGE_EPS, eps), x, y), y)
    at = f"{where} ({len(x)} probe inputs)"
    return (
        [(f"{at} @ {eps_label(eps)}", acc_s, {spec["label"]: acc_w})],
        [(f"{at} @ {eps_label(max(LARGE_EPS, eps))}", acc_l)],
    )


def _guarded(name: str, check: Any, *args: Any) -> dict[str, Any]:
    """A probe check that cannot run here (an attack the protocol's norm refuses) is skipped,
    never a reason to lose the evaluation it follows."""
    try:
        return check(*args)
    except ClipxError as exc:
        return _check(name, "skipped", f"could not run: {exc}")


# -- all together -------------------------------------------------------------------------------------
def run_checks(
    loaded: Any, protocol: Protocol, records: list[dict[str, Any]], identity: dict[str, Any]
) -> dict[str, Any]:
    """Every check at the protocol's level; failures are printed as warnings."""
    level = protocol.checks
    if level == "off" or getattr(protocol, "evaluate_with", None) is not None:
        why = "off" if level == "off" else "not a per-sample classification protocol"
        return {"level": level, "skipped": why, "results": [], "failed": []}
    certified = bool(identity.get("certified"))
    black, large = blackbox_rows(records), large_eps_rows(records)
    results = [
        check_monotone(records),
        check_robust_le_clean(records),
        check_stronger(records, protocol.cascade),
        check_determinism(records, protocol),
    ]
    if not any(r.get("robust_acc") is not None for r in records):
        probe = [
            _check(n, "skipped", "no attacks") for n in ("gradients", "randomized", "loss_rises")
        ]
    else:
        zs, x, y, spec = _probe_inputs(loaded, protocol)
        probe = [
            _guarded("gradients", check_gradients, zs, x, y),
            _guarded("randomized", check_randomized, zs, x, y),
            _guarded("loss_rises", check_loss_rises, zs, protocol, x, y),
        ]
        if level == "full":
            try:
                extra_black, extra_large = probe_full(zs, protocol, x, y, spec["dataset"])
            except ClipxError as exc:  # e.g. an L2 protocol: no Linf Square / PGD to run
                print(f"clipx: warning: full checks not run: {exc}", file=sys.stderr, flush=True)
            else:
                black += extra_black
                large += [] if certified else extra_large
    results += probe
    results += [
        _black_box_vs_white("blackbox_vs_whitebox", black),
        _large_eps(large, certified),
    ]
    failed = [r["name"] for r in results if r["status"] == "fail"]
    for r in results:
        if r["status"] == "fail":
            print(
                f"clipx: warning: attack-strength check '{r['name']}' failed: {r['detail']}",
                file=sys.stderr,
                flush=True,
            )
    return {
        "level": level,
        "strict": protocol.checks_strict,
        "tolerance_points": TOL,
        "results": results,
        "failed": failed,
    }


def enforce(card: dict[str, Any]) -> None:
    """checks_strict: a failed check is an error (the card, with the failure, is already written)."""
    checks = card.get("checks") or {}
    if checks.get("strict") and checks.get("failed"):
        raise ClipxError(
            f"{card['label']}: attack-strength checks failed ({', '.join(checks['failed'])}); "
            "see the result card (checks_strict = true)"
        )
