"""Models, data and bare reference computations shared by the benchmark sections."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from clip_robust_ext.data.templates import CIFAR10_CLASSES, TEMPLATE_SETS
from clip_robust_ext.models import LoadedCLIP, ZeroShotClassifier

CIFAR10 = list(CIFAR10_CLASSES)
SINGLE_TEMPLATE = ["This is a photo of a {}"]  # TeCoA's
ENSEMBLE_80 = list(TEMPLATE_SETS["openai-imagenet"])  # OpenAI's 80 ImageNet templates
assert len(ENSEMBLE_80) == 80


def setup_env() -> None:
    """Offline, one intra-op thread (the machine is shared; the ratios do not need more)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    threads = int(os.environ.get("CLIPX_BENCH_THREADS", "1"))
    torch.set_num_threads(threads)
    from clip_robust_ext.utils.malloc import tune_malloc

    tune_malloc()  # what the clipx command runs with (CLIPX_MALLOC_TUNING=0 to measure without)


def small_c10() -> LoadedCLIP:
    """A fresh clipx-small-c10 (ViT, 32 px) from $CLIPX_ASSETS/small_clip."""
    from clip_robust_ext.registry import get

    return get("models", "clipx-small-c10").obj()


@functools.lru_cache(maxsize=1)
def _cifar10_test():
    from clip_robust_ext.data import assets_dir
    from clip_robust_ext.data.folders import TarImageFolder

    return TarImageFolder(assets_dir() / "cifar10_test_jpegs.tar.gz", "test")


def cifar_batch(n: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n CIFAR-10 test images (every 7th image from `offset`, so all classes appear) + labels."""
    ds = _cifar10_test()
    idx = [(offset + 7 * i) % len(ds) for i in range(n)]
    items = [ds[i] for i in idx]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def classnames(c: int) -> list[str]:
    """CIFAR-10's names for 10 classes; distinct synthetic names beyond (the text tower pads every
    prompt to its context length, so its cost does not depend on the words)."""
    if c == 10:
        return list(CIFAR10)
    return [f"{CIFAR10[i % 10]} number {i}" for i in range(c)]


def templates(t: int) -> list[str]:
    if t == 1:
        return list(SINGLE_TEMPLATE)
    if t == 80:
        return list(ENSEMBLE_80)
    raise ValueError(f"templates: 1 or 80, got {t}")


def labels_for(c: int, y: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The true CIFAR labels for 10 classes, seeded random labels in [0, c) otherwise."""
    if c == 10:
        return y.clone()
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, c, y.shape, generator=g)


def image_fb(zs: ZeroShotClassifier, x: torch.Tensor, k: int = 1) -> Callable[[], None]:
    """k bare image-tower forward+backward passes to the (already normalised) input: what k
    attack steps cannot do without. Timed as one block of k, like a k-step attack, so both arms
    of a ratio absorb interruptions alike. Call it with the parameters frozen (attack_mode)."""
    xn = zs.preprocess(x).detach()

    def run() -> None:
        for _ in range(k):
            inp = xn.clone().requires_grad_(True)
            feats = zs.clip.encode_image(inp)
            torch.autograd.grad(feats.sum(), inp)

    return run


def zero_shot_fb(zs: ZeroShotClassifier, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One training forward+backward (TeCoA's): CE of the zero-shot logits, gradients into the
    parameters that require grad (the trainable ones). Bare open_clip calls."""
    xn = zs.preprocess(x).detach()

    def run() -> None:
        params = [p for p in zs.clip.parameters() if p.requires_grad]
        with torch.no_grad():
            text = zs.class_matrix()
        feats = F.normalize(zs.clip.encode_image(xn).float(), dim=-1)
        logits = zs.clip.logit_scale.exp() * feats @ text.t()
        torch.autograd.grad(F.cross_entropy(logits, y), params)

    return run


def contrastive_fb(
    zs: ZeroShotClassifier, x: torch.Tensor, x_adv: torch.Tensor, captions: list[str]
) -> Callable[[], None]:
    """One MMCoA forward+backward: two image and two caption encodings, two symmetric
    contrastive losses, gradients into the trainable parameters. Bare open_clip calls."""
    xn, xan = zs.preprocess(x).detach(), zs.preprocess(x_adv).detach()
    eye = torch.arange(x.shape[0])

    def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        logits = scale * img @ txt.t()
        return F.cross_entropy(logits, eye) + F.cross_entropy(logits.t(), eye)

    def run() -> None:
        params = [p for p in zs.clip.parameters() if p.requires_grad]
        scale = zs.clip.logit_scale.exp()
        enc_i = lambda t: F.normalize(zs.clip.encode_image(t).float(), dim=-1)  # noqa: E731
        enc_t = lambda t: F.normalize(zs.clip.encode_text(t).float(), dim=-1)  # noqa: E731
        loss = clip_loss(enc_i(xan), enc_t(zs.tokenizer(captions)), scale)
        loss = loss + clip_loss(enc_i(xn), enc_t(zs.tokenizer(captions)), scale)
        torch.autograd.grad(loss, params)

    return run


def text_fwd_cost_per_prompt(zs: ZeroShotClassifier, n: int = 64) -> float:
    """A quick estimate (seconds per prompt) used only to choose step counts."""
    import time

    tokens = zs.tokenize(["a photo of a thing"] * n)
    with torch.no_grad():
        zs.clip.encode_text(tokens)
        start = time.process_time()
        zs.clip.encode_text(tokens)
        return max((time.process_time() - start) / n, 1e-6)


def fmt_ratio(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def check(value: float, op: str, bound: float) -> bool:
    return value <= bound if op == "<=" else value >= bound


Row = dict[str, Any]
