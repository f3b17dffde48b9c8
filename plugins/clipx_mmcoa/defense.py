"""The MMCoA defense: multimodal contrastive adversarial training (METHODS.md section 4).

loss = lambda_img * [CE(S(x_adv, T)) + CE(S(x_adv, T)^T)] + lambda_txt * [CE(S(x, T_adv)) + CE(S(x, T_adv)^T)]
S = logit_scale * cosine (N x N) between images and the batch captions T; identity targets, or
same-class targets with class_aware=True (plain in-batch targets treat two images of one class
as negatives). x_adv: PGD on the zero-shot CE over all class prompts ("text-supervised image
adversarial examples"). T_adv: the text attack on the captions (target "captions", label-free KL
goal: "image-supervised text adversarial examples"). Both towers are trained by default.

T_adv is cached per caption string and recomputed against the current weights once per epoch
(or every `text_refresh_steps` steps): templated captions repeat, and re-running TextAttack on
every batch would dominate training time. MMCoA's code re-attacks every batch; a refresh of 1
step reproduces that.

Fidelity to the authors' code (docs/FIDELITY.md#mmcoa): the loss, targets, weights and optimiser
are theirs. Their code also has quirks that change the numbers; each has an option, off by default
because the default is the method as described:
  leak_attack_gradients  their training PGD calls backward() on the unfrozen model after
                         zero_grad, so the 10 attack steps' zero-shot CE gradients (both towers)
                         are added to every optimiser step; clipx freezes the model while attacking.
                         Refused under amp = "fp16" (the gradient scaler would shrink the leak).
  substitutes_from       "previous-token": their BERT-Attack's [CLS] offset.
  stopwords              "reference": their case-sensitive list, no stop words as substitutes.
Their fp32 / constant-lr / weight decay on every parameter / unclamped logit scale are TrainConfig
settings (amp, schedule, decay_all_params, clamp_logit_scale); the `paper` profile of
recipes/mmcoa.toml sets them.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from clip_robust_ext.api import (
    FIDELITY_DEFAULTS,
    Batch,
    CaptionAttackCache,
    CLIPTextAttacker,
    ClipxUsageError,
    Defense,
    TextAttackConfig,
    TrainContext,
    ZeroShotClassifier,
    checked,
    clip_contrastive_loss,
    format_eps,
    parse_eps,
    verify_adversarial,
)


class MMCoA(Defense):
    """MMCoA (Zhou et al. 2024): contrastive loss on (adversarial images, captions) + (images, adversarial captions)."""

    name = "mmcoa"
    trainable = "both"
    # MMCoA.py: Adam betas (0.9, 0.98), eps 1e-6, weight decay 0.2, lr 1e-6, full CLIP
    train_defaults = {
        "optimizer": "adam",
        "lr": 1e-6,
        "betas": (0.9, 0.98),
        "eps": 1e-6,
        "weight_decay": 0.2,
    }

    def __init__(
        self,
        eps: float | str = "1/255",
        alpha: float | str = "1/255",
        steps: int = 10,
        lambda_img: float = 0.5,
        lambda_txt: float = 0.5,
        class_aware: bool = False,
        transformation: str = "bert-mlm",
        max_words: int = 1,
        max_candidates: int = 10,
        masked_lm: Any = "bert-base-uncased",
        tokenizer: Any = None,
        min_confidence: float | None = 0.3,
        text_refresh_steps: int = 0,
        text_seed: int = 0,
        substitutes_from: Literal["word", "previous-token"] = "word",
        stopwords: Literal["clipx", "reference"] = "clipx",
        leak_attack_gradients: bool = False,
    ):
        self.eps = parse_eps(eps, name="eps")
        self.alpha = parse_eps(alpha, name="alpha")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ClipxUsageError(f"mmcoa: steps must be a positive integer, got {steps!r}")
        self.steps = steps
        for name, value in (("lambda_img", lambda_img), ("lambda_txt", lambda_txt)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ClipxUsageError(f"mmcoa: {name} must be a non-negative number, got {value!r}")
        self.lambda_img, self.lambda_txt = float(lambda_img), float(lambda_txt)
        if not isinstance(class_aware, bool):
            raise ClipxUsageError(f"mmcoa: class_aware must be true or false, got {class_aware!r}")
        self.class_aware = class_aware
        if not isinstance(text_refresh_steps, int) or text_refresh_steps < 0:
            raise ClipxUsageError(
                f"mmcoa: text_refresh_steps must be >= 0 (0 = once per epoch), got {text_refresh_steps!r}"
            )
        self.text_refresh_steps = text_refresh_steps
        if not isinstance(leak_attack_gradients, bool):
            raise ClipxUsageError(
                f"mmcoa: leak_attack_gradients must be true or false, got {leak_attack_gradients!r}"
            )
        self.leak_attack_gradients = leak_attack_gradients
        lm_name = masked_lm if isinstance(masked_lm, str) else TextAttackConfig.masked_lm
        self.text_config = TextAttackConfig(
            transformation=transformation,
            goal="kl",
            max_words=max_words,
            max_candidates=max_candidates,
            masked_lm=lm_name,
            min_confidence=min_confidence,
            seed=text_seed,
            substitutes_from=substitutes_from,
            stopwords=stopwords,
        )
        self._masked_lm = None if isinstance(masked_lm, str) else masked_lm
        self._tokenizer = tokenizer
        self._captions: CaptionAttackCache | None = None

    def setup(self, ctx: TrainContext) -> None:
        config = ctx.extras.get("config")
        if self.leak_attack_gradients and getattr(config, "amp", "off") == "fp16":
            # the GradScaler would divide the leaked gradients by its scale (about 1/65536)
            raise ClipxUsageError(
                "mmcoa: leak_attack_gradients needs amp = 'off' (the reference's fp32) or 'bf16'; "
                "under 'fp16' the gradient scaler would shrink the leaked gradients ~65536x"
            )

    def _caption_cache(self, ctx: TrainContext) -> CaptionAttackCache:
        if self._captions is None or self._captions.attacker.classifier is not ctx.model:
            attacker = CLIPTextAttacker(
                ctx.model, self.text_config, masked_lm=self._masked_lm, tokenizer=self._tokenizer
            )
            self._captions = CaptionAttackCache(attacker)
        cache = self._captions
        cache.refresh(
            ctx.epoch if self.text_refresh_steps == 0 else ctx.step // self.text_refresh_steps
        )
        return cache

    def adversarial_images(self, batch: Batch, ctx: TrainContext) -> torch.Tensor:
        if self.leak_attack_gradients:
            x_adv = leaky_pgd(
                ctx.model, batch.images, batch.labels, self.eps, self.alpha, self.steps
            )
        else:
            attack = ctx.attack(
                "pgd", eps=self.eps, alpha=self.alpha, steps=self.steps, random_start=True
            )
            x_adv = attack(batch.images, batch.labels).images
        verify_adversarial(batch.images, x_adv, self.eps, "Linf", "mmcoa/pgd")
        return x_adv

    def loss(self, batch: Batch, ctx: TrainContext):
        model = ctx.model
        x_adv = self.adversarial_images(batch, ctx)
        records = self._caption_cache(ctx)(batch.captions)
        adv_captions = [r.perturbed for r in records]

        scale = model.logit_scale()
        labels = batch.labels if self.class_aware else None
        img_adv = model.encode_image(x_adv)
        txt = model.encode_text(batch.captions)
        # clip_contrastive_loss is (CE + CE^T) / 2; MMCoA sums the two directions
        l_img = 2 * clip_contrastive_loss(img_adv, txt, scale, labels)
        img = model.encode_image(batch.images)
        txt_adv = model.encode_text(adv_captions)
        l_txt = 2 * clip_contrastive_loss(img, txt_adv, scale, labels)
        loss = self.lambda_img * l_img + self.lambda_txt * l_txt
        with torch.no_grad():
            adv_acc = (
                (scale * img_adv @ model.class_matrix().t())
                .argmax(1)
                .eq(batch.labels)
                .float()
                .mean()
            )
        perturbed = [r for r in records if r.status == "perturbed"]
        return loss, {
            "loss_img": float(l_img.detach()),
            "loss_txt": float(l_txt.detach()),
            "adv_acc": float(adv_acc),
            "captions_perturbed": len(perturbed) / max(len(records), 1),
            "caption_kl": sum(r.score for r in perturbed) / max(len(perturbed), 1),
        }

    def config(self) -> dict[str, Any]:
        return {
            "eps": format_eps(self.eps),
            "alpha": format_eps(self.alpha),
            "steps": self.steps,
            "lambda_img": self.lambda_img,
            "lambda_txt": self.lambda_txt,
            "class_aware": self.class_aware,
            "text_refresh_steps": self.text_refresh_steps,
            # fidelity options only when set, so runs started before they existed still resume
            **({"leak_attack_gradients": True} if self.leak_attack_gradients else {}),
            "text": self.text_config.to_dict(omit_defaults=FIDELITY_DEFAULTS),
            "masked_lm_object": None if self._masked_lm is None else type(self._masked_lm).__name__,
        }


def class_text_with_grad(model: ZeroShotClassifier) -> torch.Tensor:
    """The (C, D) class-prompt matrix computed with autograd through the text tower (the cached
    class_matrix() is built under no_grad)."""
    feats = model.encode_text([t for prompts in model.prompts for t in prompts])
    splits = torch.split(feats, [len(p) for p in model.prompts])
    return F.normalize(torch.stack([s.mean(0) for s in splits]), dim=-1)


def leaky_pgd(
    model: ZeroShotClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
) -> torch.Tensor:
    """MMCoA's training PGD as their code behaves: CE over the zero-shot logits, each step's
    backward() run on the unfrozen model in its current mode, so every step's parameter
    gradients (image tower, text tower, logit scale) accumulate into .grad and reach the next
    optimiser step. Same iterates as the registered "pgd" (uniform start, sign steps, fp32).
    Single process only: the inner backward would fire DDP's gradient hooks."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        raise ClipxUsageError("mmcoa: leak_attack_gradients is not supported under DDP")
    x = images.detach().float()
    with torch.autocast(x.device.type, enabled=False):
        adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1).detach()
        for _ in range(steps):
            adv.requires_grad_(True)
            logits = model.logit_scale() * model.encode_image(adv) @ class_text_with_grad(model).t()
            F.cross_entropy(logits, labels).backward()
            step = alpha * adv.grad.sign()
            adv = (x + (adv.detach() + step - x).clamp(-eps, eps)).clamp(0, 1).detach()
    return adv


# mmcoa(**params) -> MMCoA; recipes check parameter names and types against its signature
factory = checked(MMCoA, "defense 'mmcoa'")
