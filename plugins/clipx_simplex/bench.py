"""Cost accounting for AdvSimplex: closed form vs Monte Carlo, and a training step vs TeCoA.

    python -m clipx_simplex.bench [--model procedural-small] [--batch 16] [--repeats 3]

Prints a markdown table (and --json). Measured per call, on the given model and a batch of
procedural shapes: wall time and the number of images run through the vision tower, counted by
a forward hook (attack, loss and reference passes alike). Backward passes are not observable by
module hooks for double backward, so they are stated analytically in the package docstring."""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from typing import Any

import torch

from clip_robust_ext.api import Batch, ProceduralShapes, TrainContext, ZeroShotClassifier, get

from .divergence import get_divergence
from .expectation import closed_form, monte_carlo
from .trajectory import pgd_trajectory


class ImageCounter:
    """Counts images through `module` (forward hook), e.g. the CLIP vision tower."""

    def __init__(self, module: torch.nn.Module):
        self.images = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.images += int(args[0].shape[0])

    def close(self) -> None:
        self._handle.remove()


def _timed(fn: Callable[[], Any], counter: ImageCounter, repeats: int) -> tuple[float, float]:
    """(median seconds, images per call) after one warm-up call."""
    fn()
    times, counter.images = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], counter.images / repeats


def _setup(model_name: str, batch: int, seed: int):
    torch.manual_seed(seed)
    loaded = get("models", model_name).obj()
    data = ProceduralShapes("test", n=batch, seed=seed, image_size=loaded.image_size[0])
    x = torch.stack([data[i][0] for i in range(batch)]).float()
    y = torch.tensor([int(data[i][1]) for i in range(batch)])
    zs = ZeroShotClassifier(loaded, data.classnames, ["This is a photo of a {}"])
    zs.clip.requires_grad_(False)
    zs.clip.visual.requires_grad_(True)
    return zs, x, y


def bench(
    model_name: str = "procedural-small",
    batch: int = 16,
    eps: float = 4 / 255,
    steps: int = 3,
    mc_samples: int = 100,
    repeats: int = 3,
    seed: int = 0,
) -> list[dict[str, Any]]:
    zs, x, y = _setup(model_name, batch, seed)
    ref = copy.deepcopy(zs).eval().requires_grad_(False)
    with torch.no_grad():  # a model that has moved from its reference: D(x), J non-zero
        for p in zs.clip.visual.parameters():
            p.mul_(1 + 0.01 * torch.randn_like(p))
    div = get_divergence("kl")
    counter = ImageCounter(zs.clip.visual)
    torch.manual_seed(seed)
    deltas = pgd_trajectory(zs, x, y, eps, eps / 2, steps) - x
    with torch.no_grad():
        target = div.target(ref(x))
    params = [p for p in zs.parameters() if p.requires_grad]
    rows: list[dict[str, Any]] = []

    def add(what: str, fn: Callable[[], Any]) -> None:
        seconds, images = _timed(fn, counter, repeats)
        rows.append({"measure": what, "seconds": seconds, "images_per_call": images})

    def cf(backward: bool, derivatives: str = "autograd"):
        def run():
            terms = closed_form(
                zs, div, x, deltas, target, derivatives=derivatives, create_graph=backward
            )
            if backward:
                torch.autograd.grad(terms.value.mean(), params)

        return run

    def mc(backward: bool):
        def run():
            with torch.set_grad_enabled(backward):
                out = monte_carlo(zs, div, x, deltas, target, mc_samples).mean
            if backward:
                torch.autograd.grad(out.mean(), params)

        return run

    zs.train()
    add("closed form (autograd), value", cf(False))
    add("closed form (autograd), value + parameter backward", cf(True))
    add(
        "closed form (finite-difference), value + parameter backward", cf(True, "finite-difference")
    )
    add(f"Monte Carlo {mc_samples}/triangle, value", mc(False))
    add(f"Monte Carlo {mc_samples}/triangle, value + parameter backward", mc(True))

    ctx = TrainContext(
        model=zs, reference=ref, classnames=zs.classnames, templates=zs.templates, device=x.device
    )
    batch_obj = Batch(x, y, [""] * len(y))
    defenses = {
        "tecoa": get("defenses", "tecoa").obj(eps=eps, alpha=eps / 2, steps=steps),
        "advsimplex": get("defenses", "advsimplex").obj(eps=eps, alpha=eps / 2, steps=steps),
        "advsimplex (finite-difference)": get("defenses", "advsimplex").obj(
            eps=eps, alpha=eps / 2, steps=steps, derivatives="finite-difference"
        ),
    }
    for name, defense in defenses.items():

        def step(defense=defense):
            zs.zero_grad(set_to_none=True)
            loss, _ = defense.loss(batch_obj, ctx)
            loss.backward()

        add(f"training step: {name} (loss + backward)", step)
    counter.close()
    base = next(
        r["seconds"] for r in rows if r["measure"] == "training step: tecoa (loss + backward)"
    )
    mc_base = next(
        r["seconds"]
        for r in rows
        if r["measure"].endswith("value + parameter backward") and r["measure"].startswith("Monte")
    )
    for r in rows:
        r["vs_tecoa_step"] = r["seconds"] / base
        r["vs_mc_backward"] = r["seconds"] / mc_base
        r.update(
            model=model_name, batch=batch, steps=steps, eps=eps, threads=torch.get_num_threads()
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| measure | seconds | images through vision tower | x TeCoA step | x MC-backward |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['measure']} | {r['seconds']:.3f} | {r['images_per_call']:.0f} | "
            f"{r['vs_tecoa_step']:.2f} | {r['vs_mc_backward']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="procedural-small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eps", type=float, default=4 / 255)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--mc-samples", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = bench(args.model, args.batch, args.eps, args.steps, args.mc_samples, args.repeats)
    print(json.dumps(rows, indent=1) if args.json else markdown(rows))


if __name__ == "__main__":
    main()
