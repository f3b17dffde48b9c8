"""SAFT and TGA-ZSR as Defenses (the Trainer owns the loop; these are per-batch losses).

SAFT:    L = (1/K) sum_k CE(P_k(x_adv), y)  + attn_alpha * ||A_theta(x_adv) - A_0(x)||
                                            + attn_beta  * ||A_theta(x)     - A_0(x)||
with x_adv from the semantic-ensemble attack and A the text-guided attention map for the
ground-truth class (its description embeddings averaged). TGA-ZSR is the same loss with the
descriptions off (K = 1, the single template). Only the vision tower is trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clip_robust_ext.api import (
    Batch,
    ClipxUsageError,
    Defense,
    TrainContext,
    atomic_write_json,
    format_eps,
    parse_eps,
    verify_adversarial,
)

from .attack import SemanticEnsemblePGD, ensemble_ce, ensemble_logits
from .attention import DISTANCES, attention_distance, attention_map, features_and_tokens
from .descriptions import (
    DEFAULT_TEMPLATE,
    FILTERS,
    DescriptionSource,
    build_class_descriptions,
    resolve_source,
)


class SAFT(Defense):
    name = "saft"
    trainable = "visual"
    # the SAFT / TGA-ZSR code: SGD momentum 0.9, lr 1e-4, no weight decay (vision tower only)
    train_defaults = {"optimizer": "sgd", "lr": 1e-4, "momentum": 0.9, "weight_decay": 0.0}

    def __init__(
        self,
        eps: float | str = "1/255",
        alpha: float | str = "1/255",
        steps: int = 2,
        descriptions: DescriptionSource = "auto",
        k: int = 5,
        filter: str = "name-similarity",
        template: str = DEFAULT_TEMPLATE,
        attn_alpha: float = 0.08,
        attn_beta: float = 0.05,
        distance: str = "l2",
        attention_size: str = "image",
    ):
        self.eps = parse_eps(eps, name="eps")
        self.alpha = parse_eps(alpha, name="alpha")
        if not isinstance(steps, int) or steps < 0:
            raise ClipxUsageError(f"steps must be a non-negative integer, got {steps!r}")
        for key, value in (("attn_alpha", attn_alpha), ("attn_beta", attn_beta)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ClipxUsageError(f"{key} must be a non-negative number, got {value!r}")
        if distance not in DISTANCES:
            raise ClipxUsageError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if attention_size not in ("image", "patches"):
            raise ClipxUsageError(
                f"attention_size must be 'image' or 'patches', got {attention_size!r}"
            )
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ClipxUsageError(
                f"k (descriptions per class) must be a positive integer, got {k!r}"
            )
        if filter not in FILTERS:
            raise ClipxUsageError(f"filter must be one of {FILTERS}, got {filter!r}")
        if descriptions not in (None, "auto", "template"):
            resolve_source(descriptions)  # a missing file or unknown set fails now, not at training
        self.steps, self.descriptions, self.k, self.filter = steps, descriptions, k, filter
        self.template, self.distance, self.attention_size = template, distance, attention_size
        self.attn_alpha, self.attn_beta = float(attn_alpha), float(attn_beta)
        self.needs_reference = self.attn_alpha > 0 or self.attn_beta > 0
        self._attack: SemanticEnsemblePGD | None = None

    def config(self) -> dict[str, Any]:
        out = super().config()
        out["eps"], out["alpha"] = format_eps(self.eps), format_eps(self.alpha)
        if not isinstance(out.get("descriptions"), (str, type(None))):
            out["descriptions"] = "inline"
        return out

    @property
    def descriptions_info(self) -> dict[str, Any] | None:
        """Which set, K, filter, and the classes that fell back to the template (after setup)."""
        return None if self._attack is None else self._attack.class_descriptions.info()

    def setup(self, ctx: TrainContext) -> None:
        """Pick and filter the descriptions once, with the starting model's text tower, and write
        them next to the checkpoints (the descriptions are part of the method)."""
        model = ctx.model
        cd = build_class_descriptions(
            ctx.classnames,
            self.descriptions,
            k=self.k,
            filter=self.filter,
            template=self.template,
            model=model,
        )
        self._attack = SemanticEnsemblePGD(
            model, eps=self.eps, alpha=self.alpha, steps=self.steps, class_descriptions=cd
        )
        ctx.extras["descriptions"] = cd.info()
        run_dir, dist = ctx.extras.get("run_dir"), ctx.extras.get("dist")
        if run_dir is not None and getattr(dist, "is_main", True):
            atomic_write_json(
                Path(run_dir) / "descriptions.json",
                {**cd.info(), "classes": dict(zip(cd.classnames, cd.descriptions))},
            )

    def loss(self, batch: Batch, ctx: TrainContext) -> tuple[torch.Tensor, dict[str, float]]:
        if self._attack is None or self._attack.model is not ctx.model:
            self.setup(ctx)
        atk = self._attack
        x, y = batch.images, batch.labels
        x_adv = atk(x, y)
        verify_adversarial(x, x_adv, self.eps, "Linf", f"{self.name} training attack")
        weights, scale = atk.bank.weights(), ctx.model.logit_scale()

        use_attention = self.needs_reference
        if use_attention:
            feats_adv, tok_adv = features_and_tokens(ctx.model, x_adv)
        else:
            feats_adv, tok_adv = ctx.model.encode_image(x_adv), None
        logits = ensemble_logits(feats_adv, weights, scale)
        ce = ensemble_ce(logits, y)
        metrics = {
            "ce": float(ce.detach()),
            "adv_acc": float((logits.mean(1).argmax(1) == y).float().mean()),
        }
        loss = ce
        if use_attention:
            if ctx.reference is None:
                raise ClipxUsageError(
                    f"{self.name}: the attention terms need ctx.reference (needs_reference)"
                )
            text = atk.bank.class_text(y)
            size = ctx.model.image_size if self.attention_size == "image" else None
            with torch.no_grad():
                _, tok_ref = features_and_tokens(ctx.reference, x)
                a_ref = attention_map(tok_ref, text, size)
            a_adv = attention_map(tok_adv, text, size)
            am_adv = attention_distance(a_adv, a_ref, self.distance)
            loss = loss + self.attn_alpha * am_adv
            metrics["attn_adv"] = float(am_adv.detach())
            if self.attn_beta > 0:
                _, tok_clean = features_and_tokens(ctx.model, x)
                am_clean = attention_distance(
                    attention_map(tok_clean, text, size), a_ref, self.distance
                )
                loss = loss + self.attn_beta * am_clean
                metrics["attn_clean"] = float(am_clean.detach())
        return loss, metrics


class TGAZSR(SAFT):
    """TGA-ZSR (Yu et al., NeurIPS 2024): single-template TeCoA + the two attention terms."""

    name = "tga-zsr"

    def __init__(
        self,
        eps: float | str = "1/255",
        alpha: float | str = "1/255",
        steps: int = 2,
        template: str = DEFAULT_TEMPLATE,
        attn_alpha: float = 0.08,
        attn_beta: float = 0.05,
        distance: str = "l2",
        attention_size: str = "image",
    ):
        super().__init__(
            eps=eps,
            alpha=alpha,
            steps=steps,
            descriptions=None,
            k=1,
            filter="none",
            template=template,
            attn_alpha=attn_alpha,
            attn_beta=attn_beta,
            distance=distance,
            attention_size=attention_size,
        )
