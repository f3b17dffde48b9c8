"""CLIP-KL Co-Attack (Zhang, Yi, Sang, ACM MM 2022) and image-text retrieval evaluation.

Attacks: "kl-pgd" (image-only embedding-KL PGD), "coattack" (text attack on the class prompts
first, then the KL image step pushed away from the perturbed prompt of the true class; usable
against zero-shot classification as in MMCoA's Co-Attack table). Protocol: "coattack-retrieval".

Fidelity to the authors' code (docs/FIDELITY.md#co-attack):
the image step equals theirs. In retrieval their code keeps each image attacked against its LAST
caption: caption_targets = "last-caption" (default "mean-caption"). Their BERT-Attack quirks are
the text attack's substitutes_from / stopwords options. The default text attack is WordNet."""

from __future__ import annotations

from typing import Any

from clip_robust_ext import hookimpl
from clip_robust_ext.api import AttackOutput, attack_mode, verify_adversarial

from .attack import CoAttackKL
from .retrieval import RetrievalProtocol


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


@hookimpl
def register_attacks(register):
    register(
        "kl-pgd",
        KLImageAttack,
        modality="image",
        description="image-only embedding-KL PGD (Co-Attack's image baseline)",
    )
    from clip_robust_ext.api import checked, text_attack_parameters

    register(
        "coattack",
        # the text attack's parameters are part of the signature: recipes check them up front
        checked(CoAttackClassifier, "attack 'coattack'", extra=text_attack_parameters()),
        modality="multimodal",
        description="CLIP-KL Co-Attack: KL text attack on prompts, then KL image PGD away from them",
    )


@hookimpl
def register_evaluators(register):
    register(
        "coattack-retrieval",
        RetrievalProtocol,
        description="image-text retrieval R@1/5/10 + attack success rate (Co-Attack protocol)",
    )
