"""The analysis figures (matplotlib, Agg): each drawn only from the JSON document it sits next to,
so a figure can be redrawn from its data."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..utils.io import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, rect: tuple[float, ...] = (0, 0, 1, 1)) -> Path:
    buf = io.BytesIO()
    fig.tight_layout(rect=rect)
    fig.savefig(buf, format="png")
    _pyplot().close(fig)
    return atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def plot_interpolation(doc: dict[str, Any], path: Path) -> Path:
    """Clean and robust accuracy against alpha: one clean line per dataset, one robust per eps."""
    plt = _pyplot()
    clean: dict[str, dict[float, float]] = defaultdict(dict)
    robust: dict[tuple[str, str], dict[float, float]] = defaultdict(dict)
    for p in doc["points"]:
        clean[p["dataset"]][p["alpha"]] = p["clean_acc"]
        if p["robust_acc"] is not None:
            robust[(p["dataset"], p["eps_str"])][p["alpha"]] = p["robust_acc"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for ds, pts in clean.items():
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], marker="o", label=f"clean ({ds})")
    for (ds, eps), pts in robust.items():
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], marker="s", ls="--", label=f"robust {eps} ({ds})")
    ax.set_xlabel(f"alpha  (0 = {doc['a']['label']}, 1 = {doc['b']['label']})")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.set_title(f"weight interpolation, protocol {doc['protocol']}", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_cosines(doc: dict[str, Any], path: Path) -> Path:
    """Histogram of cos(clean, adversarial) embedding per model, on the shared bin edges."""
    plt = _pyplot()
    edges = doc["histogram_edges"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for m in doc["models"]:
        ax.stairs(
            m["cosine"]["counts"], edges, label=f"{m['label']} (mean {m['cosine']['mean']:.3f})"
        )
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("cosine(clean embedding, adversarial embedding)")
    ax.set_ylabel("samples")
    ax.set_title(
        f"{doc['attack']} at {doc['eps_str']} on {doc['dataset']} (n={doc['n']})", fontsize=9
    )
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_separation(doc: dict[str, Any], path: Path) -> Path:
    """Per class: mean intra-class minus mean inter-class cosine, clean vs adversarial, per model."""
    plt = _pyplot()
    names = doc["classnames"]
    models = doc["models"]
    fig, axes = plt.subplots(
        len(models), 1, figsize=(7, 2.4 * len(models) + 0.6), dpi=120, squeeze=False
    )
    width = 0.4
    for ax, m in zip(axes[:, 0], models):
        for j, kind in enumerate(("clean", "adversarial")):
            gaps = [c["gap"] for c in m["separation"][kind]["per_class"]]
            xs = [i + (j - 0.5) * width for i in range(len(gaps))]
            sil = m["separation"][kind]["silhouette"]
            heights = [float("nan") if g is None else g for g in gaps]
            ax.bar(xs, heights, width, label=f"{kind} (silhouette {_num(sil)})")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
        ax.set_ylabel("intra - inter cos")
        ax.set_title(m["label"], fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def plot_projection(doc: dict[str, Any], path: Path) -> Path:
    """2-D projection of clean (dots) and adversarial (crosses) embeddings, coloured by class."""
    plt = _pyplot()
    models = doc["models"]
    labels = doc["labels"]
    fig, axes = plt.subplots(
        1, len(models), figsize=(4.6 * len(models), 4.4), dpi=120, squeeze=False
    )
    cmap = plt.get_cmap("tab10" if len(doc["classnames"]) <= 10 else "tab20")
    for ax, m in zip(axes[0], models):
        proj = m["projection"]
        colours = [cmap(y % cmap.N) for y in labels]
        cx, cy = zip(*proj["clean"])
        ax.scatter(cx, cy, c=colours, s=8, marker="o", alpha=0.7)
        ax.scatter(*zip(*proj["adversarial"]), c=colours, s=10, marker="x", alpha=0.7)
        ax.set_title(f"{m['label']} ({proj['method']}; o clean, x adversarial)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        plt.Line2D([], [], ls="", marker="o", color=cmap(i % cmap.N), label=name)
        for i, name in enumerate(doc["classnames"])
    ]
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=min(10, len(handles)))
    return _save(fig, path, rect=(0, 0.07, 1, 1))
