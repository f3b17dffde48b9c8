"""The baseline defenses every new method is compared with (METHODS.md section 7).

Each is a Defense: the Trainer engine runs the loop; these only compute the loss.
Attacks inside losses go through ctx.attack (registered torchattacks PGD, fp32, frozen, eval
mode, verified) except FARE's embedding-space inner max (fare_attack.EmbeddingPGD)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from clip_robust_ext.api import (
    Batch,
    ClipxUsageError,
    Defense,
    TrainContext,
    attack_mode,
    checked,
    clip_contrastive_loss,
    format_eps,
    parse_eps,
    verify_adversarial,
)

from .apgd_reference import EmbeddingAPGDReference
from .fare_attack import EmbeddingAPGD, EmbeddingPGD, embedding_l2
from .noise import GaussianAug

INNER_ATTACKS = ("pgd", "apgd", "apgd-reference")


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # a device tensor: the Trainer gathers every metric into one tensor (one host sync per step)
    return (logits.argmax(1) == labels).float().mean().detach()


class _PGDMixin:
    """TeCoA-lineage PGD: L_inf, uniform random start, CE over the zero-shot logits."""

    eps: float
    alpha: float
    steps: int

    def _budget(self, eps, alpha, steps) -> None:
        self.eps = parse_eps(eps, name="eps")
        self.alpha = parse_eps(alpha, name="alpha")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ClipxUsageError(f"{self.name}: steps must be a positive integer, got {steps!r}")
        self.steps = steps

    def adversarial(self, batch: Batch, ctx: TrainContext) -> torch.Tensor:
        attack = ctx.attack(
            "pgd", eps=self.eps, alpha=self.alpha, steps=self.steps, random_start=True
        )
        x_adv = attack(batch.images, batch.labels).images
        verify_adversarial(batch.images, x_adv, self.eps, "Linf", f"{self.name}/pgd")
        return x_adv

    def config(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        out["eps"], out["alpha"] = format_eps(self.eps), format_eps(self.alpha)
        return out


class FTStandard(Defense):
    """Clean contrastive fine-tuning of both towers (MMCoA's FT-standard baseline); started from
    random initialisation it is contrastive pre-training. Symmetric InfoNCE on image/caption
    pairs; class_aware=True makes every same-class caption in the batch a positive."""

    name = "ft-standard"
    trainable = "both"
    # MMCoA's optimiser for full CLIP tuning: Adam betas (0.9, 0.98), eps 1e-6, wd 0.2, lr 1e-6
    train_defaults = {
        "optimizer": "adam",
        "lr": 1e-6,
        "betas": (0.9, 0.98),
        "eps": 1e-6,
        "weight_decay": 0.2,
    }

    def __init__(self, class_aware: bool = False):
        if not isinstance(class_aware, bool):
            raise ClipxUsageError(
                f"ft-standard: class_aware must be true or false, got {class_aware!r}"
            )
        self.class_aware = class_aware

    def loss(self, batch: Batch, ctx: TrainContext):
        image = ctx.model.encode_image(batch.images)
        text = ctx.model.encode_text(batch.captions)
        scale = ctx.model.logit_scale()
        loss = clip_contrastive_loss(image, text, scale, batch.labels if self.class_aware else None)
        return loss, {"logit_scale": scale.detach()}


class TeCoA(_PGDMixin, Defense):
    """TeCoA (Mao et al., ICLR 2023): CE of the zero-shot logits on PGD examples (fixed class
    prompts), vision tower only. Defaults from the code: eps 1/255, 2 steps of 1/255."""

    name = "tecoa"
    trainable = "visual"
    train_defaults = {"optimizer": "sgd", "momentum": 0.9, "lr": 1e-5, "weight_decay": 0.0}

    def __init__(self, eps: float | str = "1/255", alpha: float | str = "1/255", steps: int = 2):
        self._budget(eps, alpha, steps)

    def loss(self, batch: Batch, ctx: TrainContext):
        x_adv = self.adversarial(batch, ctx)
        logits = ctx.model(x_adv)
        return F.cross_entropy(logits, batch.labels), {"adv_acc": _accuracy(logits, batch.labels)}


class CosineLogits(nn.Module):
    """A ZeroShotClassifier's logits at temperature 1: cos(image, class text), no logit scale.

    PMG-AFT's wrapper (authors' code) re-normalises the logit-scaled text embedding, which
    removes the scale: its CE, both KL terms and its PGD all see plain cosines."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.encode_image(images) @ self.classifier.class_matrix().t()


class PMGAFT(_PGDMixin, Defense):
    """PMG-AFT (Wang et al., CVPR 2024): CE(P(x_adv), y) + w_ref KL(P_ref(x_adv) || P(x_adv))
    + w_clean KL(P(x) || P(x_adv)). The official code sums the KL terms over the batch
    (reduction='sum', the default here); 'batchmean' divides them by the batch size.

    Fidelity (docs/FIDELITY.md#pmg-aft): logits='cosine' (default) is the authors' code, where
    P = softmax(cos) at temperature 1 in the CE, both KL terms and the training PGD; the paper
    states no temperature. logits='scaled' uses CLIP's logit scale (100 x cos), clipx's earlier
    behaviour: the KL terms then weigh ~100x more against the CE, a different objective."""

    name = "pmg-aft"
    trainable = "visual"
    needs_reference = True
    train_defaults = {"optimizer": "sgd", "momentum": 0.9, "lr": 5e-5, "weight_decay": 0.0}
    REDUCTIONS = ("sum", "batchmean")
    LOGITS = ("cosine", "scaled")

    def __init__(
        self,
        eps: float | str = "1/255",
        alpha: float | str = "1/255",
        steps: int = 2,
        w_ref: float = 1.0,
        w_clean: float = 1.0,
        reduction: str = "sum",
        logits: Literal["cosine", "scaled"] = "cosine",
    ):
        self._budget(eps, alpha, steps)
        if reduction not in self.REDUCTIONS:
            raise ClipxUsageError(
                f"pmg-aft: reduction must be one of {self.REDUCTIONS}, got {reduction!r}"
            )
        if logits not in self.LOGITS:
            raise ClipxUsageError(f"pmg-aft: logits must be one of {self.LOGITS}, got {logits!r}")
        self.w_ref, self.w_clean, self.reduction = float(w_ref), float(w_clean), reduction
        self.logits = logits
        self._heads: dict[int, nn.Module] = {}

    def head(self, classifier: nn.Module) -> nn.Module:
        """The classifier whose logits the loss and the attack use (cached per classifier)."""
        if self.logits == "scaled":
            return classifier
        key = id(classifier)
        if key not in self._heads or self._heads[key].classifier is not classifier:
            self._heads[key] = CosineLogits(classifier)
        return self._heads[key]

    def adversarial(self, batch: Batch, ctx: TrainContext) -> torch.Tensor:
        attack = ctx.attack(
            "pgd",
            model=self.head(ctx.model),
            eps=self.eps,
            alpha=self.alpha,
            steps=self.steps,
            random_start=True,
        )
        x_adv = attack(batch.images, batch.labels).images
        verify_adversarial(batch.images, x_adv, self.eps, "Linf", f"{self.name}/pgd")
        return x_adv

    def loss(self, batch: Batch, ctx: TrainContext):
        x_adv = self.adversarial(batch, ctx)
        model = self.head(ctx.model)
        logits_adv = model(x_adv)
        logits_clean = model(batch.images)
        with torch.no_grad():
            logits_ref = self.head(ctx.reference)(x_adv)
        log_p_adv = F.log_softmax(logits_adv.float(), dim=1)
        ce = F.cross_entropy(logits_adv, batch.labels)
        kl_ref = F.kl_div(log_p_adv, F.softmax(logits_ref.float(), dim=1), reduction=self.reduction)
        kl_clean = F.kl_div(
            log_p_adv, F.softmax(logits_clean.float(), dim=1), reduction=self.reduction
        )
        loss = ce + self.w_ref * kl_ref + self.w_clean * kl_clean
        return loss, {
            "ce": ce.detach(),
            "kl_ref": kl_ref.detach(),
            "kl_clean": kl_clean.detach(),
            "adv_acc": _accuracy(logits_adv, batch.labels),
        }


class FARE(Defense):
    """FARE (Schlarmann et al., ICML 2024): unsupervised; min ||f(x_adv) - f_ref(x)||_2^2 on
    un-normalised image embeddings, x_adv maximising the same distance (PGD-10, step 1/255).
    The paper trains eps 2/255 (FARE^2) and 4/255 (FARE^4); 4/255 is the default here, as in
    the repository's training script. clean_weight mixes in the clean-image term (code option).
    inner_attack: "pgd" (the README commands behind the released checkpoints) | "apgd" (APGD as
    the paper describes it, on the same loss; alpha unused) | "apgd-reference" (the training
    script's argparse default as its apgd_train runs it: no random start, normalised embedding
    vs un-normalised target, integer checkpoints, last iterate; apgd_reference.py)."""

    name = "fare"
    trainable = "visual"
    needs_reference = True
    train_defaults = {"optimizer": "adamw", "lr": 1e-5, "weight_decay": 1e-4}

    def __init__(
        self,
        eps: float | str = "4/255",
        alpha: float | str = "1/255",
        steps: int = 10,
        clean_weight: float = 0.0,
        inner_attack: Literal["pgd", "apgd", "apgd-reference"] = "pgd",
    ):
        if inner_attack not in INNER_ATTACKS:
            raise ClipxUsageError(
                f"fare: inner_attack must be one of {', '.join(INNER_ATTACKS)}, got {inner_attack!r}"
            )
        self.inner_attack = inner_attack
        self.eps = parse_eps(eps, name="eps")
        self.alpha = parse_eps(alpha, name="alpha")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ClipxUsageError(f"fare: steps must be a positive integer, got {steps!r}")
        if not 0.0 <= float(clean_weight) <= 1.0:
            raise ClipxUsageError(f"fare: clean_weight must be in [0, 1], got {clean_weight!r}")
        self.steps, self.clean_weight = steps, float(clean_weight)
        self._attack: EmbeddingPGD | None = None

    def loss(self, batch: Batch, ctx: TrainContext):
        x = batch.images
        with torch.no_grad():
            target = ctx.reference.encode_image(x, normalize=False)
        if self._attack is None or self._attack.model is not ctx.model:
            if self.inner_attack == "apgd":
                self._attack = EmbeddingAPGD(ctx.model, self.eps, self.steps)
            elif self.inner_attack == "apgd-reference":
                self._attack = EmbeddingAPGDReference(ctx.model, self.eps, self.steps)
            else:
                self._attack = EmbeddingPGD(ctx.model, self.eps, self.alpha, self.steps)
        extra = (batch.labels,) if self.inner_attack == "apgd-reference" else ()
        with attack_mode(ctx.model), torch.autocast(x.device.type, enabled=False):
            x_adv = self._attack(x.float(), target.float(), *extra)
        verify_adversarial(x, x_adv, self.eps, "Linf", "fare/embedding-pgd")
        loss_adv = embedding_l2(ctx.model.encode_image(x_adv, normalize=False), target).mean()
        metrics = {"loss_adv": loss_adv.detach()}
        if self.clean_weight > 0:
            loss_clean = embedding_l2(ctx.model.encode_image(x, normalize=False), target).mean()
            metrics["loss_clean"] = loss_clean.detach()
            return (1 - self.clean_weight) * loss_adv + self.clean_weight * loss_clean, metrics
        return loss_adv, metrics

    def config(self) -> dict[str, Any]:
        return {
            "eps": format_eps(self.eps),
            "alpha": format_eps(self.alpha),
            "steps": self.steps,
            "clean_weight": self.clean_weight,
            # only when not the default, so FARE runs started before the option still resume
            **({"inner_attack": self.inner_attack} if self.inner_attack != "pgd" else {}),
        }


def factory(cls: type[Defense]):
    """factory(**params) -> Defense, naming unknown parameters with the closest accepted one."""
    return checked(cls, f"defense '{cls.name}'")


DEFENSES = {cls.name: cls for cls in (FTStandard, TeCoA, PMGAFT, FARE, GaussianAug)}
