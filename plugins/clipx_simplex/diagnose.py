"""Why AdvSimplex trained badly on the procedural ResNet: two measurements behind `derivatives`.

    python -m clipx_simplex.diagnose smoothness --arch clipx-tiny-rn   # ReLU ResNet
    python -m clipx_simplex.diagnose smoothness --arch clipx-tiny      # GELU ViT
    python -m clipx_simplex.diagnose probe --derivatives autograd --lr 1e-4 --steps 20

`smoothness` compares, in fp64, the autograd weight-gradient of each closed-form term (D(x),
J^T E[u], 1/2 tr(H E[uu^T])) along its own direction with central differences of the term: on a
smooth tower they agree; on a piecewise-linear one the J and H terms at one point jump when a
unit crosses its kink, the differences do not converge, and autograd's gradient is not the
gradient of a continuous loss. `probe` trains a few SGD steps (the simplex recipe's optimiser,
batch 32, PGD-3 at 4/255) from procedural-small and prints, every 5 steps, the loss terms and the
clean accuracy and KL to the start model on 256 held-out images. One JSON line per result."""

from __future__ import annotations

import argparse
import copy
import json

import torch
import torch.nn.functional as F

from clip_robust_ext.api import (
    TEMPLATE_SETS,
    Batch,
    TrainContext,
    ZeroShotClassifier,
    build_dataset,
    procedural_small,
    seed_everything,
)

from .defense import AdvSimplex
from .divergence import get_divergence
from .expectation import closed_form

TERMS = ("zeroth", "first", "second")


def _model(arch: str, templates: str, dtype=torch.float32):
    loaded = procedural_small(arch=arch, progress=False)
    loaded.model.to(dtype)
    data = {"dataset": "procedural-shapes", "split": "train", "n": 1024, "templates": templates}
    ds, classnames, _ = build_dataset(data, 0)
    zs = ZeroShotClassifier(loaded, classnames, TEMPLATE_SETS[templates]).to(dtype)
    return loaded, zs, ds, classnames


def _stack(ds, idx) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([ds[int(i)][0] for i in idx]), torch.tensor([ds[int(i)][1] for i in idx])


def smoothness(arch: str, templates: str, n: int = 8, steps=(1e-4, 1e-5)) -> list[dict]:
    """Autograd directional derivative of each term vs central differences (fp64, train mode)."""
    loaded, zs, ds, _ = _model(arch, templates, torch.float64)
    x, _ = _stack(ds, range(n))
    x = x.double()
    div = get_divergence("kl")
    with torch.no_grad():
        target = div.target(zs.eval()(x))
    gen = torch.Generator().manual_seed(0)
    deltas = (torch.rand(4, *x.shape, generator=gen, dtype=torch.float64) * 2 - 1) * 4 / 255
    params = [p for name, p in loaded.model.named_parameters() if name.startswith("visual")]
    zs.train()
    rows = []
    for term in TERMS:

        def value(term: str = term) -> torch.Tensor:
            terms = closed_form(zs, div, x, deltas, target, create_graph=True)
            return getattr(terms, term).sum()

        grads = torch.autograd.grad(value(), params, allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        direction = [g / norm for g in grads]
        row = {"arch": arch, "term": term, "autograd": float(norm)}
        for h in steps:
            ends = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for p, d in zip(params, direction):
                        p.add_(sign * h * d)
                    ends.append(float(value()))
                    for p, d in zip(params, direction):
                        p.sub_(sign * h * d)
            row[f"central_diff_h{h:g}"] = (ends[0] - ends[1]) / (2 * h)
        rows.append(row)
    return rows


def probe(
    derivatives: str, lr: float, steps: int, seed: int, weight: float, estimator: str
) -> list[dict]:
    """A few AdvSimplex (or TeCoA: weight 0) SGD steps from procedural-small, logged every 5."""
    loaded, zs, ds, classnames = _model("clipx-tiny-rn", "shapes")
    val, _, _ = build_dataset(
        {"dataset": "procedural-shapes", "split": "test", "n": 256, "templates": "shapes"}, 0
    )
    xv, yv = _stack(val, range(256))
    ref_loaded = copy.deepcopy(loaded)
    ref_loaded.model.eval().requires_grad_(False)
    ref = ZeroShotClassifier(ref_loaded, classnames, TEMPLATE_SETS["shapes"]).eval()
    defense = AdvSimplex(
        eps="4/255", alpha="2/255", steps=3, weight=weight, derivatives=derivatives,
        estimator=estimator,
    )  # fmt: skip
    ctx = TrainContext(
        model=zs, reference=ref, classnames=classnames, templates=TEMPLATE_SETS["shapes"],
        device=torch.device("cpu"),
    )  # fmt: skip
    for name, p in loaded.model.named_parameters():
        p.requires_grad_(name.startswith("visual"))
    opt = torch.optim.SGD([p for p in loaded.model.parameters() if p.requires_grad], lr, 0.9)

    def held_out() -> dict:
        zs.eval()
        with torch.no_grad():
            logp, ref_logp = F.log_softmax(zs(xv), -1), F.log_softmax(ref(xv), -1)
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).mean()
        return {"val_acc": float((logp.argmax(1) == yv).float().mean()), "val_kl": float(kl)}

    seed_everything(seed)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    rows = [{"step": 0, **held_out()}]
    for step in range(1, steps + 1):
        x, y = _stack(ds, order[((step - 1) * 32) % len(ds) :][:32])
        zs.train()
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / 2)  # the recipe's 2 warm-up steps
        loss, metrics = defense.loss(Batch(images=x, labels=y, captions=[""] * len(y)), ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 5 == 0 or step == steps:
            rows.append({"step": step, "loss": float(loss.detach()), **metrics, **held_out()})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m clipx_simplex.diagnose")
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("smoothness")
    s.add_argument("--arch", default="clipx-tiny-rn", choices=["clipx-tiny-rn", "clipx-tiny"])
    p = sub.add_parser("probe")
    p.add_argument("--derivatives", default="autograd", choices=["autograd", "finite-difference"])
    p.add_argument("--estimator", default="closed-form", choices=["closed-form", "mc"])
    p.add_argument("--weight", type=float, default=1.0, help="0 = TeCoA's loss alone")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.what == "smoothness":
        templates = "shapes" if args.arch == "clipx-tiny-rn" else "tecoa"
        rows = smoothness(args.arch, templates)
    else:
        rows = probe(args.derivatives, args.lr, args.steps, args.seed, args.weight, args.estimator)
        rows = [{**vars(args), **r} for r in rows]
    for row in rows:
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
