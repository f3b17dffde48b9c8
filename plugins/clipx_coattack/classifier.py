"""The Co-Attack attacks registered for zero-shot classification (image-only KL PGD, Co-Attack)."""

from __future__ import annotations

from typing import Any

from clip_robust_ext.api import AttackOutput, attack_mode, verify_adversarial

from .attack import CoAttackKL


class KLImageAttack:
    """Image-only KL attack (text_weight 0) as a registered image attack."""

    norm = "Linf"

    def __init__(
        self, model, eps="2/255", steps: int = 10, alpha=None, random_start: str = "positive"
    ):
        self.model = model
        self.attack = CoAttackKL(
            model, eps=eps, steps=steps, alpha=alpha, text_weight=0.0, random_start=random_start
        )
        self.eps = self.attack.eps

    def __call__(self, images, labels):
        with attack_mode(self.model):
            return self.attack(images, None)


class CoAttackClassifier:
    """Co-Attack against zero-shot classification: perturbed class prompts, then the image step."""

    norm = "Linf"

    def __init__(
        self,
        model,
        eps="2/255",
        steps: int = 10,
        alpha=None,
        text_weight: float = 3.0,
        random_start: str = "positive",
        **text_params: Any,
    ):
        from clip_robust_ext.api import TextAttackOnPrompts

        text_params.setdefault("goal", "kl")
        self.model = model
        self.text = TextAttackOnPrompts(model, **text_params)
        self.attack = CoAttackKL(
            model,
            eps=eps,
            steps=steps,
            alpha=alpha,
            text_weight=text_weight,
            random_start=random_start,
        )
        self.eps = self.attack.eps

    def __call__(self, images, labels) -> AttackOutput:
        victim, info = self.text.perturbed_classifier()
        text_emb = victim.class_matrix()[labels.to(victim.device)]
        with attack_mode(self.model):
            adv = self.attack(images, text_emb)
        verify_adversarial(images, adv, self.eps, "Linf", "coattack")
        return AttackOutput(
            images=adv, model=victim, info={**info, "text_weight": self.attack.text_weight}
        )
