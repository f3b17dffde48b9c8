"""APT's objective: min over the context of CE(f_ctx(x_adv), y), x_adv = PGD on the images.

Fidelity to the authors' code (TreeLLi/APT, trainers/apt.py; docs/FIDELITY.md#apt):
- context: n_ctx vectors after SOT and before the class name (their class_token_position "end"),
  initialised N(0, 0.02^2) or from the embeddings of `init` words (their CTX_INIT); default 16;
- attack_prompt "onfly" (their default): the training PGD attacks the current learned prompts;
  "constant": it attacks the hand-written template prompts (their 'constant'); their third mode,
  'perturbed' (the prompt is also perturbed in the inner loop), is not implemented;
- PGD: uniform random start, `steps` sign steps of `alpha`; torchattacks PGD projects onto the
  [0, 1] box every step, their code keeps delta in [-eps, eps] and clamps only the image
  (pgd_update = "reference", reference.py);
- augmentation: their configs train with random-resized-crop + flip (augment =
  "resized-crop-flip"); clipx's default is none;
- optimiser (Dassl defaults of their configs): SGD lr 2e-3, momentum 0.9, weight decay 5e-4,
  cosine; their 1-epoch constant warm-up at 1e-5 is not reproduced (clipx's warm-up is linear);
- class_specific: their CSC learns one independent context per class, so a class it never saw
  has none; here each training class learns an offset added to the shared vectors, and classes
  without one (held-out classes) use the shared vectors alone.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from clip_robust_ext.api import (
    Batch,
    ClipxUsageError,
    Defense,
    PromptContext,
    TrainContext,
    attach_prompt_context,
    attack_mode,
    build_prompts,
    checked,
    format_eps,
    parse_eps,
    prompt_context_of,
    verify_adversarial,
)

from .reference import clamped_image_pgd, resized_crop_flip

ATTACK_PROMPTS = ("onfly", "constant")
PGD_UPDATES = ("projected", "reference")
AUGMENTS = ("none", "resized-crop-flip")


class FixedPromptHead(nn.Module):
    """A classifier's logits against a fixed class matrix (APT's 'constant' attack prompts)."""

    def __init__(self, classifier: nn.Module, matrix: torch.Tensor):
        super().__init__()
        self.classifier = classifier
        self.register_buffer("matrix", matrix.detach())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.classifier.encode_image(images)
        return self.classifier.logit_scale() * feats @ self.matrix.t()


class APT(Defense):
    """APT (Li et al., CVPR 2024): a learned prompt context, towers frozen, CE on PGD examples."""

    name = "apt"
    trainable = "prompt"
    train_defaults = {"optimizer": "sgd", "momentum": 0.9, "lr": 2e-3, "weight_decay": 5e-4}

    def __init__(
        self,
        eps: float | str = "1/255",
        alpha: float | str = "2/765",
        steps: int = 3,
        n_ctx: int | None = None,
        init: str = "",
        class_specific: bool = False,
        attack_prompt: Literal["onfly", "constant"] = "onfly",
        pgd_update: Literal["projected", "reference"] = "projected",
        augment: Literal["none", "resized-crop-flip"] = "none",
    ):
        self.eps = parse_eps(eps, name="eps")
        self.alpha = parse_eps(alpha, name="alpha")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ClipxUsageError(f"apt: steps must be a positive integer, got {steps!r}")
        if n_ctx is not None and (
            isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1
        ):
            raise ClipxUsageError(f"apt: n_ctx must be a positive integer, got {n_ctx!r}")
        if not isinstance(init, str):
            raise ClipxUsageError(f"apt: init must be a string of words, got {init!r}")
        if not isinstance(class_specific, bool):
            raise ClipxUsageError(
                f"apt: class_specific must be true or false, got {class_specific!r}"
            )
        if attack_prompt not in ATTACK_PROMPTS:
            raise ClipxUsageError(
                f"apt: attack_prompt must be one of {ATTACK_PROMPTS}, got {attack_prompt!r}"
            )
        for name, value, allowed in (("pgd_update", pgd_update, PGD_UPDATES),
                                     ("augment", augment, AUGMENTS)):  # fmt: skip
            if value not in allowed:
                raise ClipxUsageError(f"apt: {name} must be one of {allowed}, got {value!r}")
        self.pgd_update, self.augment = pgd_update, augment
        self.steps, self.n_ctx, self.init = steps, n_ctx, init.strip()
        self.class_specific, self.attack_prompt = class_specific, attack_prompt
        self._head: FixedPromptHead | None = None

    def setup(self, ctx: TrainContext) -> None:
        """Attach a new context to the model (kept when the model already has one: a resumed
        run, or a start model tuned before), and the fixed head for 'constant'."""
        zs = ctx.model
        if prompt_context_of(zs.clip) is None:
            context = PromptContext.initial(
                zs.clip,
                zs.tokenizer,
                n_ctx=self.n_ctx,
                init=self.init,
                classnames=ctx.classnames,
                class_specific=self.class_specific,
            )
            attach_prompt_context(zs.clip, context)
        if self.attack_prompt == "constant":
            with torch.no_grad():
                fixed = zs.text_matrix(build_prompts(ctx.classnames, ctx.templates))
            self._head = FixedPromptHead(zs, fixed)

    def loss(self, batch: Batch, ctx: TrainContext):
        target = ctx.model if self._head is None else self._head
        x = resized_crop_flip(batch.images) if self.augment == "resized-crop-flip" else batch.images
        x_adv = self.adversarial_images(target, x, batch.labels, ctx)
        verify_adversarial(x, x_adv, self.eps, "Linf", "apt/pgd")
        logits = ctx.model(x_adv)
        acc = (logits.argmax(1) == batch.labels).float().mean().detach()
        return F.cross_entropy(logits, batch.labels), {"adv_acc": acc}

    def adversarial_images(self, target, x: torch.Tensor, labels: torch.Tensor, ctx: TrainContext):
        """torchattacks PGD (default) or the reference's update (reference.py), fp32, frozen."""
        if self.pgd_update == "projected":
            attack = ctx.attack(
                "pgd", model=target, eps=self.eps, alpha=self.alpha, steps=self.steps,
                random_start=True,
            )  # fmt: skip
            return attack(x, labels).images
        with attack_mode(target), torch.autocast(x.device.type, enabled=False):
            return clamped_image_pgd(target, x.float(), labels, self.eps, self.alpha, self.steps)

    def config(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        for key, default in (("pgd_update", "projected"), ("augment", "none")):
            if out.get(key) == default:  # only when set, so earlier runs still resume
                out.pop(key)
        out["eps"], out["alpha"] = format_eps(self.eps), format_eps(self.alpha)
        return out


def factory(cls: type[Defense]):
    """factory(**params) -> Defense, naming unknown parameters with the closest accepted one."""
    return checked(cls, f"defense '{cls.name}'")
