"""Do SAFT's descriptions mean anything to a given CLIP? The measurement behind docs/methods.md's
SAFT note (why SAFT moves robust accuracy no more than TeCoA on the small procedural ViT).

    python -m clipx_saft.diagnose                                   # procedural ViT, shapes
    python -m clipx_saft.diagnose --model clipx-small-c10 --descriptions cifar10-descriptions

Prints one JSON object: zero-shot accuracy with the template, with each kept description
classifier W_k and with their ensemble; the cosine of each description embedding to its own class's
template embedding and to the other classes'; and, on the same images, the cosine between the
input gradients of template CE (what template PGD climbs) and of the description-ensemble CE (what
SAFT's attack climbs), with their sign agreement (what a sign-PGD step sees). Cosines near 1 mean
the semantic-ensemble attack is template PGD on that model, so SAFT trains on TeCoA's examples."""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from clip_robust_ext.api import (
    TEMPLATE_SETS,
    ZeroShotClassifier,
    build_dataset,
    build_model,
)

from .attack import DescriptionBank, ensemble_ce, ensemble_logits
from .descriptions import build_class_descriptions

MODELS = {  # --model -> ([model] table, [data] table, description set)
    "procedural-vit": (
        {"source": "procedural-small", "arch": "clipx-tiny"},
        {"dataset": "procedural-shapes", "split": "test"},
        "shapes-descriptions",
    ),
    "clipx-small-c10": (
        {"source": "clipx-small-c10"},
        {"dataset": "cifar10-jpegs", "split": "test"},
        "cifar10-descriptions",
    ),
}


def measure(model: str, n: int = 200, k: int = 5, descriptions: str | None = None) -> dict:
    model_spec, data_spec, default_set = MODELS[model]
    loaded = build_model(model_spec, "cpu")
    ds, classnames, _ = build_dataset({**data_spec, "n": n, "templates": "tecoa"}, 0)
    zs = ZeroShotClassifier(loaded, classnames, TEMPLATE_SETS["tecoa"]).eval()
    cd = build_class_descriptions(
        classnames,
        descriptions or default_set,
        k=k,
        filter="name-similarity",
        template=TEMPLATE_SETS["tecoa"][0],
        model=zs,
    )
    bank = DescriptionBank(zs, cd)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        w, t = bank.weights(), zs.class_matrix()  # (K, C, D), (C, D)
        feats = zs.encode_image(x)
        ensemble = F.normalize(w.mean(0), dim=-1)
        own = torch.einsum("kcd,cd->kc", w, t)
        others = torch.einsum("kcd,ed->kce", w, t)[:, ~torch.eye(len(t), dtype=torch.bool)]
        out = {
            "model": model,
            "descriptions": descriptions or default_set,
            "n": len(y),
            "k": cd.k,
            "acc_template": float((zs(x).argmax(1) == y).float().mean()),
            "acc_per_description": [
                float(((feats @ wk.T).argmax(1) == y).float().mean()) for wk in w
            ],
            "acc_description_ensemble": float(((feats @ ensemble.T).argmax(1) == y).float().mean()),
            "cos_description_to_own_template": float(own.mean()),
            "cos_description_to_own_template_min": float(own.min()),
            "cos_description_to_other_templates": float(others.mean()),
        }
    xa = x.clone().requires_grad_(True)
    (g_template,) = torch.autograd.grad(F.cross_entropy(zs(xa), y, reduction="sum"), xa)
    logits = ensemble_logits(zs.encode_image(xa), bank.weights(), zs.logit_scale())
    (g_ensemble,) = torch.autograd.grad(ensemble_ce(logits, y, reduction="none").sum(), xa)
    cos = F.cosine_similarity(g_template.flatten(1), g_ensemble.flatten(1))
    agree = (g_template.sign() == g_ensemble.sign()).float().flatten(1).mean(1)
    out["input_grad_cosine_mean"] = float(cos.mean())
    out["input_grad_cosine_median"] = float(cos.median())
    out["input_grad_sign_agreement"] = float(agree.mean())
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m clipx_saft.diagnose")
    parser.add_argument("--model", default="procedural-vit", choices=sorted(MODELS))
    parser.add_argument(
        "--descriptions", default=None, help="description set (default: the model's)"
    )
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.model, args.n, descriptions=args.descriptions)))


if __name__ == "__main__":
    main()
