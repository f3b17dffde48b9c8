"""CLIP-KL Co-Attack (Zhang, Yi, Sang, ACM MM 2022) and image-text retrieval evaluation.

Attacks: "kl-pgd" (image-only embedding-KL PGD), "coattack" (text attack on the class prompts
first, then the KL image step pushed away from the perturbed prompt of the true class; usable
against zero-shot classification as in MMCoA's Co-Attack table). Protocol: "coattack-retrieval".

Fidelity to the authors' code (docs/FIDELITY.md#co-attack):
the image step equals theirs. In retrieval their code keeps each image attacked against its LAST
caption: caption_targets = "last-caption" (default "mean-caption"). Their BERT-Attack quirks are
the text attack's substitutes_from / stopwords options. The default text attack is WordNet."""

from __future__ import annotations

from clip_robust_ext import hookimpl

# hooks import the torch-heavy submodules: loading the plugin stays cheap (`clipx --help`)


@hookimpl
def register_attacks(register):
    from .classifier import CoAttackClassifier, KLImageAttack

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
    from .retrieval import RetrievalProtocol

    register(
        "coattack-retrieval",
        RetrievalProtocol,
        description="image-text retrieval R@1/5/10 + attack success rate (Co-Attack protocol)",
    )
