"""Clean vs adversarial image embeddings of one or more models: how far an attack moves each
embedding (cosine to its clean embedding), whether classes stay apart (intra- vs inter-class
cosine, silhouette score), and a 2-D projection (scikit-learn PCA or t-SNE).

The adversarial examples are the protocol's image attack (the toolkit's PGD by default) against
each model's own zero-shot head, every one in fp32, eval mode, a fixed seed per batch, and
checked against its eps ball before its embedding is used."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..attacks import attack_mode
from ..data.checks import collate_labelled
from ..errors import ClipxUsageError
from ..evaluation import (
    attack_batch,
    build_classifier,
    dataset_key,
    model_fingerprint,
    plan_attacks,
    protocol_samples,
)
from ..evaluation.protocols import eps_label
from ..registry import get
from .common import ModelArg, load, provenance

JSON_NAME = "features.json"
PLOTS = {
    "cosine": "features_cosine.png",
    "separation": "features_separation.png",
    "projection": "features_projection.png",
}
PROJECTIONS = ("pca", "tsne")


def single_image_attack(protocol: Any) -> tuple[dict[str, Any], float, dict[str, Any]]:
    """The one dataset (with a sample count), eps and image attack a features run needs."""
    if len(protocol.datasets) != 1:
        raise ClipxUsageError(
            f"features: give one dataset (--dataset), protocol '{protocol.name}' has "
            f"{len(protocol.datasets)}"
        )
    if len(protocol.eps) != 1:
        raise ClipxUsageError(
            f"features: give one budget (--eps), protocol '{protocol.name}' has {len(protocol.eps)}"
        )
    image = [
        a for a in protocol.attacks if (get("attacks", a["name"]).modality or "image") == "image"
    ]
    if len(image) != 1:
        raise ClipxUsageError(
            f"features: needs exactly one image attack (--attack), protocol '{protocol.name}' "
            f"has {len(image)} ({', '.join(a['label'] for a in protocol.attacks) or 'none'})"
        )
    if protocol.n_for(protocol.datasets[0]) is None:
        raise ClipxUsageError(
            "features: give a sample count (--n); every pair of samples is compared"
        )
    return protocol.datasets[0], protocol.eps[0], image[0]


def embed_clean_and_adversarial(
    zs: Any, dataset: Any, indices: Sequence[int], protocol: Any, key: str
) -> dict[str, torch.Tensor]:
    """Normalised clean and adversarial embeddings, labels and predictions of `indices`: every
    sample attacked by the engine's own batch step (`attack_batch`: seeded, checked)."""
    _, _, spec = single_image_attack(protocol)
    (planned,) = [p for p in plan_attacks(zs, protocol, key) if p.label == spec["label"]]
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("clean", "adv", "y", "pred", "adv_pred")}
    bs = protocol.batch_size
    for b, i in enumerate(range(0, len(indices), bs)):
        x, y = collate_labelled([dataset[j] for j in indices[i : i + bs]], f"dataset '{key}'")
        x, y = x.to(zs.device, torch.float32), y.to(zs.device)
        adv = attack_batch(zs, planned, x, y, protocol, key, b).images
        with attack_mode(zs), torch.no_grad():
            for name, images in (("clean", x), ("adv", adv)):
                emb = zs.encode_image(images)
                out[name].append(emb.cpu())
                pred = (emb @ zs.class_matrix().T).argmax(1)
                out["pred" if name == "clean" else "adv_pred"].append(pred.cpu())
        out["y"].append(y.cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def separation(emb: np.ndarray, labels: np.ndarray, classnames: Sequence[str]) -> dict[str, Any]:
    """Mean cosine to same-class samples (self excluded) and to other-class samples, overall and
    per class, and the silhouette score (cosine distance; scikit-learn); None where a class has
    too few samples to say."""
    from sklearn.metrics import silhouette_score

    sim = emb @ emb.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    other = labels[:, None] != labels[None, :]
    per_class = []
    for c, name in enumerate(classnames):
        rows = labels == c
        intra, inter = _mean(sim[rows][same[rows]]), _mean(sim[rows][other[rows]])
        gap = None if intra is None or inter is None else intra - inter
        per_class.append(
            {"class": name, "n": int(rows.sum()), "intra": intra, "inter": inter, "gap": gap}
        )
    intra, inter = _mean(sim[same]), _mean(sim[other])
    present = len(set(labels.tolist()))
    sil = (
        float(silhouette_score(emb, labels, metric="cosine"))
        if 2 <= present < len(labels)
        else None
    )
    return {
        "intra": intra,
        "inter": inter,
        "gap": None if intra is None or inter is None else intra - inter,
        "silhouette": sil,
        "per_class": per_class,
    }


def _mean(values: np.ndarray) -> float | None:
    """Mean of a possibly empty selection; None (JSON null) when there is nothing to average."""
    return float(values.mean()) if values.size else None


def project(clean: np.ndarray, adv: np.ndarray, method: str, seed: int) -> dict[str, Any]:
    """Clean and adversarial embeddings in one shared 2-D space (fitted on both together)."""
    both = np.concatenate([clean, adv])
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed)
        xy = pca.fit_transform(both)
        extra = {"explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio_]}
    else:
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(both) - 1) // 3)))
        xy = TSNE(
            n_components=2, perplexity=perplexity, init="pca", random_state=seed
        ).fit_transform(both)
        extra = {"perplexity": perplexity}
    xy = np.round(xy.astype(np.float64), 5)
    n = len(clean)
    return {"method": method, "clean": xy[:n].tolist(), "adversarial": xy[n:].tolist(), **extra}


def feature_stats(
    clean: torch.Tensor, adv: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str]
) -> dict[str, Any]:
    """Per-sample cos(clean, adversarial) (and the clean self-cosine, 1 up to round-off), with the
    class separation of the clean and of the adversarial embeddings."""
    c, a, y = clean.double().numpy(), adv.double().numpy(), labels.numpy()
    cos = (c * a).sum(1)
    self_cos = (c * c).sum(1)
    return {
        "cosine": {
            "values": np.round(cos, 6).tolist(),
            "mean": float(cos.mean()),
            "median": float(np.median(cos)),
            "min": float(cos.min()),
            "max": float(cos.max()),
            "clean_self_mean": float(self_cos.mean()),
        },
        "separation": {
            "clean": separation(c, y, classnames),
            "adversarial": separation(a, y, classnames),
        },
    }


def _edges(models: list[dict[str, Any]], bins: int) -> list[float]:
    lo = min(min(m["cosine"]["values"]) for m in models)
    lo = min(float(np.floor(lo * 20) / 20), 0.95)
    return np.linspace(lo, 1.0, bins + 1).round(6).tolist()


def run_features(
    models: Sequence[ModelArg],
    section: dict[str, Any],
    protocol: Any,
    device: Any,
    projection: str = "pca",
    bins: int = 40,
) -> dict[str, Any]:
    """Embed the protocol's samples clean and attacked for every model; the features.json doc."""
    if projection not in PROJECTIONS:
        raise ClipxUsageError(f"--projection: one of {', '.join(PROJECTIONS)}, got {projection!r}")
    start = time.time()
    spec, eps, attack = single_image_attack(protocol)
    key = dataset_key(spec)
    ds, indices = protocol_samples(protocol, spec)
    if len(indices) < 2:
        raise ClipxUsageError(f"features: need at least 2 samples, {key} gives {len(indices)}")
    rows = []
    labels = None
    for m in models:
        loaded = load(m, device)
        zs = build_classifier(loaded, ds.classnames, protocol.templates_for(spec))
        emb = embed_clean_and_adversarial(zs, ds, indices, protocol, key)
        labels = emb["y"]
        row = {
            "label": m.label,
            "model": m.spec,
            "arch": loaded.arch,
            "fingerprint": model_fingerprint(loaded.model),
            "clean_acc": round(100.0 * float((emb["pred"] == emb["y"]).float().mean()), 4),
            "adversarial_acc": round(
                100.0 * float((emb["adv_pred"] == emb["y"]).float().mean()), 4
            ),
            **feature_stats(emb["clean"], emb["adv"], emb["y"], ds.classnames),
        }
        row["projection"] = project(
            emb["clean"].double().numpy(), emb["adv"].double().numpy(), projection, protocol.seed
        )
        rows.append(row)
    edges = _edges(rows, bins)
    for row in rows:
        counts, _ = np.histogram(row["cosine"]["values"], bins=np.asarray(edges))
        row["cosine"]["counts"] = counts.tolist()
    return {
        "kind": "features",
        "dataset": key,
        "n": len(indices),
        "indices": list(indices),
        "labels": labels.tolist(),
        "classnames": list(ds.classnames),
        "templates": protocol.templates_for(spec),
        "attack": attack["label"],
        "attack_params": attack["params"],
        "eps": eps,
        "eps_str": eps_label(eps),
        "norm": protocol.norm,
        "histogram_edges": edges,
        "models": rows,
        **provenance(section, protocol),
        "elapsed_s": round(time.time() - start, 3),
    }
