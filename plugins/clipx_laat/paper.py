"""LAAT paper mode: a small backbone trained from scratch against frozen CLIP text anchors.

The setting of Li et al. (CVPR 2024): the image model is NOT CLIP. A Conv4 / ResNet-12 is trained
with PGD-7 adversarial training (8/255, step 2/255) on the SEEN classes, with a fixed cosine head
made of (expanded) CLIP text anchors, and tested zero-shot on NOVEL classes by swapping the head
to the novel classes' anchors (PGD-20, optionally AutoAttack; optionally episodic N-way 0-shot).

This is not a CLIP fine-tuning, so the CLIP Trainer (which trains a LoadedCLIP through a Defense)
does not host it; the loop here is deliberately small: SGD + one step decay, as in the reference.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clip_robust_ext.api import (
    ClipxError,
    ClipxUsageError,
    RunLock,
    atomic_write_json,
    atomic_write_text,
    build_attack,
    closest,
    get,
    names,
    parse_eps,
    plugin_versions,
    read_json,
    seed_everything,
    verify_adversarial,
    versions,
)

from .anchors import LAAT_TEMPLATES, AnchorSet, build_anchor_set, text_anchors
from .backbones import AnchorNet, build_backbone
from .expansion import mean_pairwise_cosine
from .losses import laat_loss
from .selection import SELECTIONS, BestEpoch

HEADS = ("expanded", "raw")  # the reference's --head cos-span / cos-clip
TRAIN_TYPES = (
    "laat",
    "at",
)  # ACE(x_adv) + beta * smoothing ('TRADES-cos') / ACE(x_adv) only ('AT')


@dataclass
class PaperConfig:
    """Paper-mode settings; defaults are the 2-core CPU profile (minutes), see recipes/laat.toml."""

    dataset: str = "cifar10-jpegs"
    dataset_params: dict[str, Any] = field(default_factory=dict)
    seen: list[str] | None = (
        None  # class names trained on; default: first half of the dataset's classes
    )
    novel: list[str] | None = None  # class names tested zero-shot; default: the other classes
    anchor_model: str = "clipx-small-c10"  # registry model whose TEXT tower gives the anchors
    anchor_model_params: dict[str, Any] = field(default_factory=dict)
    templates: list[str] = field(default_factory=lambda: list(LAAT_TEMPLATES))
    heads: list[str] = field(default_factory=lambda: list(HEADS))  # trained one after the other
    backbone: str = "conv4"
    width: int | None = None
    tau: float = 1.0
    beta: float = 1.0
    train_type: str = "laat"
    epochs: int = 2
    train_per_class: int | None = 300
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay_at: float = (
        0.6  # x0.1 from this fraction of the epochs on (the reference's only live decay)
    )
    augment: bool = True  # random crop (pad 4) + horizontal flip
    eps: float | str = "8/255"
    alpha: float | str = "2/255"
    train_steps: int = 7
    test_steps: int = 20
    test_per_class: int = 100  # novel-class test images per class
    seen_test_per_class: int = 50  # seen-class test images per class (0 = skip the seen evaluation)
    autoattack: bool = False
    autoattack_version: str = "standard"
    autoattack_n: int | None = None  # AutoAttack on the first n test images (None = all)
    episodes: int = 0  # episodic N-way 0-shot tasks on the novel classes (0 = off)
    n_way: int = 5
    n_query: int = 20
    seed: int = 0
    # fidelity to the reference's train.py (docs/FIDELITY.md#laat); defaults keep clipx's behaviour
    select_epoch: str = (
        "last"  # | "best-robust-on-test" (the reference: optimistic, test-split episodes)
    )
    select_episodes: int = (
        20  # size of the ONE episode set best-robust-on-test reuses every epoch (--n_val)
    )
    use_linear: bool | None = (
        None  # bias-free projection to the anchor dim; None = only if dims differ
    )
    drop_rate: float = 0.0  # ResNet-12 dropout + DropBlock (the reference's --drop_rate)
    dropblock_size: int = 2  # 2 for CIFAR-FS, 5 for miniImageNet in the reference
    n_support: int = 0  # episodic K-shot: K support images per class make the head (0 = zero-shot)
    text_weight: float = 0.0  # K-shot head = text_weight * anchor + K * mean support feature

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> PaperConfig:
        known = {f.name for f in fields(cls)}
        for key in params:
            if key not in known:
                raise ClipxUsageError(f"laat paper mode: unknown key '{key}'{closest(key, known)}")
        cfg = cls(**params)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for head in self.heads:
            if head not in HEADS:
                raise ClipxUsageError(
                    f"laat: head must be one of {HEADS}, got '{head}'{closest(head, HEADS)}"
                )
        if self.train_type not in TRAIN_TYPES:
            raise ClipxUsageError(
                f"laat: train_type must be one of {TRAIN_TYPES}, got '{self.train_type}'"
            )
        for key in ("epochs", "batch_size", "train_steps", "test_steps", "test_per_class"):
            if int(getattr(self, key)) < 1:
                raise ClipxUsageError(f"laat: {key} must be >= 1")
        if self.tau <= 0:
            raise ClipxUsageError(f"laat: tau must be > 0, got {self.tau}")
        if self.select_epoch not in SELECTIONS:
            raise ClipxUsageError(
                f"laat: select_epoch must be one of {SELECTIONS}, got '{self.select_epoch}'"
                f"{closest(str(self.select_epoch), SELECTIONS)}"
            )
        if self.select_epoch != "last" and int(self.select_episodes) < 1:
            raise ClipxUsageError("laat: select_episodes must be >= 1")
        if int(self.n_support) < 0 or self.text_weight < 0:
            raise ClipxUsageError("laat: n_support and text_weight must be >= 0")
        if self.use_linear not in (None, True, False):
            raise ClipxUsageError(
                f"laat: use_linear must be true, false or unset, got {self.use_linear!r}"
            )
        parse_eps(self.eps, name="eps"), parse_eps(self.alpha, name="alpha")

    @property
    def eps_value(self) -> float:
        return parse_eps(self.eps, name="eps")

    @property
    def alpha_value(self) -> float:
        return parse_eps(self.alpha, name="alpha")


# -- data ----------------------------------------------------------------------------------------
@dataclass
class SplitData:
    seen: list[str]
    novel: list[str]
    train_x: torch.Tensor  # seen-class training images, labels 0..S-1
    train_y: torch.Tensor
    seen_x: torch.Tensor  # seen-class test images
    seen_y: torch.Tensor
    novel_x: torch.Tensor  # novel-class test images, labels 0..N-1
    novel_y: torch.Tensor


def resolve_split(classnames: list[str], seen: Sequence[str] | None, novel: Sequence[str] | None):
    for group in (seen or [], novel or []):
        for c in group:
            if c not in classnames:
                raise ClipxUsageError(
                    f"laat: unknown class '{c}'{closest(c, classnames)}; classes: {classnames}"
                )
    if (
        seen is None and novel is None
    ):  # like the reference: the first classes are the training ones
        seen = classnames[: len(classnames) // 2]
    elif seen is None:
        seen = [c for c in classnames if c not in novel]
    if novel is None:
        novel = [c for c in classnames if c not in seen]
    if set(seen) & set(novel):
        raise ClipxUsageError(
            f"laat: seen and novel classes overlap: {sorted(set(seen) & set(novel))}"
        )
    if len(seen) < 2 or len(novel) < 2:
        raise ClipxUsageError("laat: need at least 2 seen and 2 novel classes")
    return list(seen), list(novel)


def _take(dataset, classnames: list[str], wanted: list[str], per_class: int | None, seed: int):
    """Decode up to `per_class` images of each wanted class (seeded choice); labels = index in wanted.
    Returned in a seeded random order, so any prefix (e.g. the AutoAttack subset) mixes classes."""
    from clip_robust_ext.api import few_shot_indices, targets_of

    targets = targets_of(dataset)
    ids = {classnames.index(c): i for i, c in enumerate(wanted)}
    keep = [i for i, t in enumerate(targets) if t in ids]
    sub_targets = [targets[i] for i in keep]
    chosen = few_shot_indices(sub_targets, per_class, seed) if per_class else list(range(len(keep)))
    order = torch.randperm(len(chosen), generator=torch.Generator().manual_seed(seed)).tolist()
    idx = [keep[chosen[j]] for j in order]
    xs, ys = [], []
    for i in idx:
        x, t = dataset[i]
        xs.append(x)
        ys.append(ids[int(t)])
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def load_split(cfg: PaperConfig) -> SplitData:
    factory = get("datasets", cfg.dataset).obj
    train = factory(split="train", **cfg.dataset_params)
    test = factory(split="test", **cfg.dataset_params)
    classnames = list(train.classnames)
    seen, novel = resolve_split(classnames, cfg.seen, cfg.novel)
    tx, ty = _take(train, classnames, seen, cfg.train_per_class, cfg.seed)
    if cfg.seen_test_per_class:
        sx, sy = _take(test, classnames, seen, cfg.seen_test_per_class, cfg.seed + 1)
    else:
        sx, sy = torch.empty(0, *tx.shape[1:]), torch.empty(0, dtype=torch.long)
    nx, ny = _take(test, classnames, novel, cfg.test_per_class, cfg.seed + 2)
    return SplitData(seen, novel, tx, ty, sx, sy, nx, ny)


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding + random horizontal flip (the reference's CIFAR-FS transform,
    without its 15-degree rotation)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offs = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        crop = padded[i, :, dy : dy + h, dx : dx + w]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


# -- attacks and evaluation ------------------------------------------------------------------------
def attack_batch(
    name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, **params
) -> torch.Tensor:
    """A registered image attack on the anchor model; every adversarial batch is verified."""
    if name not in names("attacks"):
        raise ClipxUsageError(f"attack '{name}' is not registered{closest(name, names('attacks'))}")
    atk = build_attack(name, model, eps=eps, **params)
    x_adv = atk(x, y).images
    verify_adversarial(x, x_adv, eps, "Linf", name)
    return x_adv


@torch.no_grad()
def _predict(model: AnchorNet, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])


def evaluate_head(
    model: AnchorNet,
    anchors: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: PaperConfig,
    autoattack: bool = False,
    batch: int = 250,
) -> dict[str, Any]:
    """Clean and robust accuracy with `anchors` as the head. Robust = correct on the clean image and
    under every attack run (per-sample worst case)."""
    model.set_anchors(anchors)
    model.eval()
    clean = _predict(model, x) == y
    robust = clean.clone()
    per_attack: dict[str, float] = {}
    pgd_ok = torch.zeros_like(clean)
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        adv = attack_batch(
            "pgd",
            model,
            xb,
            yb,
            cfg.eps_value,
            alpha=cfg.alpha_value,
            steps=cfg.test_steps,
            random_start=True,
        )
        pgd_ok[i : i + batch] = _predict(model, adv) == yb
    per_attack[f"pgd-{cfg.test_steps}"] = float(pgd_ok.float().mean())
    robust &= pgd_ok
    if autoattack:
        n = len(x) if cfg.autoattack_n is None else min(cfg.autoattack_n, len(x))
        aa_ok = torch.zeros(n, dtype=torch.bool)
        for i in range(0, n, batch):
            xb, yb = x[i : min(i + batch, n)], y[i : min(i + batch, n)]
            adv = attack_batch(
                "autoattack", model, xb, yb, cfg.eps_value, version=cfg.autoattack_version
            )
            aa_ok[i : i + len(xb)] = _predict(model, adv) == yb
        per_attack["autoattack"] = float(aa_ok.float().mean())
        per_attack["autoattack_n"] = n
        robust_aa = robust[:n] & aa_ok
        per_attack["robust_acc_aa_subset"] = float(robust_aa.float().mean())
    return {
        "n": len(x),
        "classes": anchors.shape[0],
        "chance": 1.0 / anchors.shape[0],
        "clean_acc": float(clean.float().mean()),
        "robust_acc": float(robust.float().mean()),
        "per_attack": per_attack,
    }


@dataclass(frozen=True)
class Episode:
    """One N-way task: its novel classes and, per class, the support and query image indices."""

    classes: torch.Tensor  # (n_way,) novel-class ids; episode label j = classes[j]
    support: torch.Tensor  # (n_way, n_support) indices into the novel test images
    query: list[torch.Tensor]  # per class, the query image indices


def draw_episodes(
    y: torch.Tensor, n_cls: int, cfg: PaperConfig, count: int, seed: int
) -> list[Episode]:
    """`count` episodes of n_way novel classes with n_support + n_query images each."""
    if cfg.n_way > n_cls:
        raise ClipxUsageError(f"laat: n_way={cfg.n_way} but only {n_cls} novel classes")
    g = torch.Generator().manual_seed(seed)
    by_class = [torch.nonzero(y == c).flatten() for c in range(n_cls)]
    out = []
    for _ in range(count):
        classes = torch.randperm(n_cls, generator=g)[: cfg.n_way]
        support, query = [], []
        for c in classes.tolist():
            pool = by_class[c]
            pick = pool[torch.randperm(len(pool), generator=g)[: cfg.n_support + cfg.n_query]]
            if len(pick) <= cfg.n_support:
                raise ClipxUsageError(
                    f"laat: novel class {c} has {len(pool)} test images; n_support={cfg.n_support} "
                    "needs more (lower n_support or raise test_per_class)"
                )
            support.append(pick[: cfg.n_support])
            query.append(pick[cfg.n_support :])
        out.append(Episode(classes, torch.stack(support), query))
    return out


def score_episodes(
    model: AnchorNet,
    anchors: torch.Tensor,
    x: torch.Tensor,
    episodes: list[Episode],
    cfg: PaperConfig,
) -> list[dict[str, Any]]:
    """evaluate_head on each episode: its classes' anchors (K = 0) or support prototypes."""
    results = []
    for ep in episodes:
        xs = torch.cat([x[q] for q in ep.query])
        ys = torch.cat([torch.full((len(q),), j, dtype=torch.long) for j, q in enumerate(ep.query)])
        head = anchors[ep.classes]
        if cfg.n_support:
            support = torch.stack([x[s] for s in ep.support])
            head = support_prototypes(model, head, support, cfg.text_weight)
        results.append(evaluate_head(model, head, xs, ys, cfg))
    return results


def evaluate_episodes(
    model: AnchorNet, anchors: torch.Tensor, x: torch.Tensor, y: torch.Tensor, cfg: PaperConfig
) -> dict[str, Any]:
    """Episodic N-way K-shot tasks (the reference's protocol): each episode draws n_way novel classes
    and n_support + n_query images per class; the head is those classes' anchors (K = 0) or their
    support prototypes (K > 0, see support_prototypes). Mean and 95% CI over episodes."""
    episodes = draw_episodes(y, anchors.shape[0], cfg, cfg.episodes, cfg.seed + 3)
    results = score_episodes(model, anchors, x, episodes, cfg)

    def stat(v: list[float]) -> dict[str, float]:
        t = torch.tensor(v, dtype=torch.float64)
        ci = 1.96 * float(t.std(unbiased=True)) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
        return {"mean": float(t.mean()), "ci95": ci}

    return {
        "episodes": cfg.episodes,
        "n_way": cfg.n_way,
        "n_support": cfg.n_support,
        "text_weight": cfg.text_weight,
        "n_query": cfg.n_query,
        "clean_acc": stat([r["clean_acc"] for r in results]),
        "robust_acc": stat([r["robust_acc"] for r in results]),
    }


@torch.no_grad()
def support_prototypes(
    model: AnchorNet, anchors: torch.Tensor, support: torch.Tensor, text_weight: float = 0.0
) -> torch.Tensor:
    """The reference's K-shot head (train.py:253-261): per class the mean of the clean support
    images' features h(x), plus text_weight x anchor / K when text_weight > 0 (their
    text_weight * t + K * mean), normalised. support: (classes, K, 3, H, W)."""
    model.eval()
    n_cls, k = support.shape[:2]
    feats = model.features(support.flatten(0, 1)).view(n_cls, k, -1).mean(1)
    if text_weight > 0:
        feats = text_weight * F.normalize(anchors.float(), dim=-1) + k * feats
    return F.normalize(feats, dim=-1)


# -- training --------------------------------------------------------------------------------------
def train_backbone(
    anchors: AnchorSet,
    data: SplitData,
    cfg: PaperConfig,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> AnchorNet:
    """Adversarial training from scratch on the seen classes with a frozen anchor head."""
    seed_everything(cfg.seed)
    backbone = build_backbone(cfg.backbone, cfg.width, cfg.drop_rate, cfg.dropblock_size)
    model = AnchorNet(backbone, anchors.seen, tau=cfg.tau, use_linear=cfg.use_linear)
    best = BestEpoch(model) if cfg.select_epoch == "best-robust-on-test" else None
    probe = (
        draw_episodes(data.novel_y, anchors.novel.shape[0], cfg, cfg.select_episodes, cfg.seed + 5)
        if best is not None
        else []
    )
    params = [
        p for p in model.parameters() if p.requires_grad
    ]  # anchors are a buffer: never trained
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    n = len(data.train_x)
    step = 0
    for epoch in range(cfg.epochs):
        lr = cfg.lr * (0.1 if epoch >= cfg.lr_decay_at * cfg.epochs else 1.0)
        for group in opt.param_groups:
            group["lr"] = lr
        perm = torch.randperm(n, generator=g)
        t0 = time.time()
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            x, y = data.train_x[idx], data.train_y[idx]
            if cfg.augment:
                x = augment_batch(x, g)
            x_adv = attack_batch(
                "pgd",
                model,
                x,
                y,
                cfg.eps_value,
                alpha=cfg.alpha_value,
                steps=cfg.train_steps,
                random_start=True,
            )
            model.train()
            feat_adv = model.features(x_adv)
            if cfg.train_type == "laat":
                feat_clean = model.features(x)
                loss, metrics = laat_loss(feat_clean, feat_adv, model.anchors, y, cfg.tau, cfg.beta)
            else:
                loss, metrics = laat_loss(feat_adv, feat_adv, model.anchors, y, cfg.tau, beta=0.0)
            if not torch.isfinite(loss):
                raise ClipxError(f"laat: non-finite loss at epoch {epoch} step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if log is not None:
                log(
                    {
                        "epoch": epoch,
                        "step": step,
                        "lr": lr,
                        "loss": float(loss.detach()),
                        **metrics,
                        "seconds": round(time.time() - t0, 2),
                    }
                )
        if best is not None:
            score = selection_score(model, anchors, data, cfg, probe)
            best.update(epoch, score)
            if log is not None:
                log({"epoch": epoch, "select_robust_acc": score, "best_epoch": best.best_epoch})
    if best is not None:
        best.restore()
        model.selection = best.summary()
    model.eval()
    return model


def selection_score(
    model: AnchorNet, anchors: AnchorSet, data: SplitData, cfg: PaperConfig, probe: list[Episode]
) -> float:
    """The reference's per-epoch model-selection score (train.py:221-223, 294; samplers.py:30-57):
    mean adversarial accuracy (clean accuracy not required) over ONE fixed set of episodes of the
    novel-class TEST images, the same every epoch (see selection.py). The attack's random draws
    are the same every epoch and do not touch the training RNG. Leaves the seen-class head on."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 6)
        results = score_episodes(model, anchors.novel, data.novel_x, probe, cfg)
    model.set_anchors(anchors.seen)
    key = f"pgd-{cfg.test_steps}"
    return float(sum(r["per_attack"][key] for r in results) / len(results))


# -- the whole experiment ----------------------------------------------------------------------------
def anchor_report(
    raw_seen: torch.Tensor, raw_novel: torch.Tensor, sets: dict[str, AnchorSet]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "raw": {
            "seen": mean_pairwise_cosine(raw_seen),
            "novel": mean_pairwise_cosine(raw_novel),
            "all": mean_pairwise_cosine(torch.cat([raw_seen, raw_novel])),
        }
    }
    exp = sets.get("expanded") or build_anchor_set(raw_seen, raw_novel, expand=True)
    st = exp.stats()
    out["expanded"] = {
        "seen": st["seen_mean_pairwise_cos"],
        "novel": st["novel_mean_pairwise_cos"],
        "all": st["all_mean_pairwise_cos"],
        "theta_max_deg": st["theta_max_deg"],
    }
    return out


def run_paper(
    cfg: PaperConfig,
    run_dir: str | Path,
    echo: Callable[[str], None] = print,
    resume: bool = False,
) -> dict[str, Any]:
    """Train one backbone per head (expanded / raw anchors), test zero-shot on the novel classes,
    write results.json, results.md and metrics.jsonl into run_dir; return the results.

    The run directory follows the recipe runner's rules: a lock refuses a second run (and an
    interrupted one unless `resume`), versions.json records packages and plugins, and a head
    whose record (`head-<head>.json`) matches this config and these plugin versions is reused,
    not retrained; metrics.jsonl holds exactly the training steps of the kept heads."""
    if cfg.autoattack and "autoattack" not in names("attacks"):
        raise ClipxUsageError("laat: autoattack=true but no 'autoattack' attack is registered")
    run_dir = Path(run_dir)
    with RunLock(run_dir, resume, what="laat paper run"):
        return _run_paper(cfg, run_dir, echo)


def _run_key(cfg_dict: dict[str, Any], plugins: dict[str, str]) -> str:
    text = json.dumps({"config": cfg_dict, "plugins": plugins}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run_paper(cfg: PaperConfig, run_dir: Path, echo: Callable[[str], None]) -> dict[str, Any]:
    t_start = time.time()
    cfg_dict = {k: v for k, v in asdict(cfg).items()}
    plugins = plugin_versions()
    key = _run_key(cfg_dict, plugins)
    atomic_write_json(run_dir / "versions.json", {"packages": versions(), "plugins": plugins})
    data = load_split(cfg)
    loaded = get("models", cfg.anchor_model).obj(**cfg.anchor_model_params)
    raw_seen = text_anchors(loaded, data.seen, cfg.templates)
    raw_novel = text_anchors(loaded, data.novel, cfg.templates)
    sets = {h: build_anchor_set(raw_seen, raw_novel, expand=(h == "expanded")) for h in cfg.heads}
    results: dict[str, Any] = {
        "config": cfg_dict,
        "seen": data.seen,
        "novel": data.novel,
        "n_train": len(data.train_x),
        "anchors": anchor_report(raw_seen, raw_novel, sets),
        "heads": {},
    }
    echo(f"laat paper: seen {data.seen} | novel {data.novel} | {len(data.train_x)} train images")
    a = results["anchors"]
    echo(
        f"mean pairwise cosine raw {a['raw']['all']:.3f} -> expanded {a['expanded']['all']:.3f} "
        f"(theta_max {a['expanded']['theta_max_deg']:.1f} deg)"
    )
    for head, anchors in sets.items():
        results["heads"][head] = _run_head(head, anchors, data, cfg, run_dir, key, echo)
    _write_metrics(run_dir, list(sets))
    results["seconds"] = round(time.time() - t_start, 1)
    atomic_write_json(run_dir / "results.json", results)
    atomic_write_text(run_dir / "results.md", results_markdown(results))
    return results


def _run_head(
    head: str,
    anchors: AnchorSet,
    data: SplitData,
    cfg: PaperConfig,
    run_dir: Path,
    key: str,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    """Train and evaluate one head, or reuse its finished record."""
    record_path = run_dir / f"head-{head}.json"
    done = read_json(record_path)
    if done and done.get("key") == key and (run_dir / f"backbone-{head}.pt").is_file():
        echo(f"[{head}] already trained and evaluated ({record_path})")
        return done["result"]
    t0 = time.time()
    with open(run_dir / f"metrics-{head}.jsonl", "w") as mf:  # a retrained head starts afresh

        def log(rec: dict[str, Any]) -> None:
            mf.write(json.dumps({"head": head, **rec}) + "\n")
            mf.flush()

        model = train_backbone(anchors, data, cfg, log)
    train_s = time.time() - t0
    torch.save(
        {"state_dict": model.state_dict(), "config": asdict(cfg), "head": head},
        run_dir / f"backbone-{head}.pt",
    )
    res: dict[str, Any] = {"train_seconds": round(train_s, 1)}
    res["selection"] = getattr(model, "selection", {"selection": "last"})
    if len(data.seen_x):
        res["seen"] = evaluate_head(model, anchors.seen, data.seen_x, data.seen_y, cfg)
    res["novel"] = evaluate_head(
        model, anchors.novel, data.novel_x, data.novel_y, cfg, autoattack=cfg.autoattack
    )
    if cfg.episodes:
        res["episodic"] = evaluate_episodes(model, anchors.novel, data.novel_x, data.novel_y, cfg)
    res["eval_seconds"] = round(time.time() - t0 - train_s, 1)
    atomic_write_json(record_path, {"key": key, "result": res})  # written last: marks it done
    sn = res.get("seen", {})
    echo(
        f"[{head}] novel clean {_pct(res['novel'], 'clean_acc')} robust {_pct(res['novel'], 'robust_acc')} "
        f"| seen clean {_pct(sn, 'clean_acc')} robust {_pct(sn, 'robust_acc')} "
        f"({train_s:.0f}s train)"
    )
    return res


def _write_metrics(run_dir: Path, heads: list[str]) -> None:
    """metrics.jsonl: the training steps of this run's heads, each once (never appended to)."""
    lines = []
    for head in heads:
        path = run_dir / f"metrics-{head}.jsonl"
        if path.is_file():
            lines += path.read_text().splitlines(keepends=True)
    atomic_write_text(run_dir / "metrics.jsonl", "".join(lines))


def _pct(rec: dict[str, Any], key: str) -> str:
    return f"{100 * rec[key]:.1f}" if key in rec else "-"


def results_markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    a = results["anchors"]
    lines = [
        f"# LAAT paper mode: {cfg['backbone']} from scratch, PGD-{cfg['train_steps']} AT at eps {cfg['eps']}",
        "",
        f"seen (trained): {', '.join(results['seen'])}; novel (zero-shot): {', '.join(results['novel'])}; "
        f"{results['n_train']} training images, {cfg['epochs']} epochs, anchors from {cfg['anchor_model']}.",
        "",
        "| anchors | mean pairwise cos (seen) | (novel) | (all) |",
        "|---|---|---|---|",
        f"| raw CLIP text | {a['raw']['seen']:.3f} | {a['raw']['novel']:.3f} | {a['raw']['all']:.3f} |",
        f"| expanded (theta_max {a['expanded']['theta_max_deg']:.1f} deg) | {a['expanded']['seen']:.3f} "
        f"| {a['expanded']['novel']:.3f} | {a['expanded']['all']:.3f} |",
        "",
        f"| head | novel clean | novel PGD-{cfg['test_steps']} | novel robust | seen clean | seen robust | chance (novel) |",
        "|---|---|---|---|---|---|---|",
    ]
    for head, r in results["heads"].items():
        nv, sn = r["novel"], r.get("seen", {})
        pgd = nv["per_attack"][f"pgd-{cfg['test_steps']}"]
        lines.append(
            f"| {head} | {100 * nv['clean_acc']:.1f} | {100 * pgd:.1f} "
            f"| {100 * nv['robust_acc']:.1f} | {_pct(sn, 'clean_acc')} | {_pct(sn, 'robust_acc')} "
            f"| {100 * nv['chance']:.1f} |"
        )
    if any("autoattack" in r["novel"]["per_attack"] for r in results["heads"].values()):
        lines += ["", "| head | novel AutoAttack acc | n |", "|---|---|---|"]
        for head, r in results["heads"].items():
            pa = r["novel"]["per_attack"]
            if "autoattack" in pa:
                lines.append(f"| {head} | {100 * pa['autoattack']:.1f} | {pa['autoattack_n']} |")
    if any("episodic" in r for r in results["heads"].values()):
        lines += [
            "",
            "| head | episodic clean (95% CI) | episodic robust (95% CI) | episodes |",
            "|---|---|---|---|",
        ]
        for head, r in results["heads"].items():
            e = r.get("episodic")
            if e:
                lines.append(
                    f"| {head} | {100 * e['clean_acc']['mean']:.1f} +- {100 * e['clean_acc']['ci95']:.1f} "
                    f"| {100 * e['robust_acc']['mean']:.1f} +- {100 * e['robust_acc']['ci95']:.1f} | {e['episodes']} |"
                )
    return "\n".join(lines) + "\n"
