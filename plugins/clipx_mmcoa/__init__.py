"""MMCoA (Zhou et al., "Revisiting the Adversarial Robustness of Vision Language Models: a
Multimodal Perspective"): the text attack on CLIP (TextAttack), the multimodal attack and the
MMCoA defense. Registered through the `clipx` entry point `mmcoa`, like any third-party plugin.

Fidelity to the authors' code (docs/FIDELITY.md#mmcoa): the loss equals
theirs; their training PGD's gradient leak (leak_attack_gradients), BERT-Attack [CLS] offset
(substitutes_from = "previous-token"), stop-word list (stopwords = "reference") and multimodal
evaluation against clean prompts (image_target = "clean-prompts") are options."""

from clip_robust_ext import hookimpl


@hookimpl
def register_attacks(register):
    from .attacks import multimodal, text_attack

    register(
        "text-attack",
        text_attack,
        modality="text",
        description="TextAttack word swap on the class prompts (bert-mlm | wordnet | charswap; KL or zero-shot goal)",
    )
    register(
        "multimodal",
        multimodal,
        modality="multimodal",
        description="image PGD against the classifier over text-attacked class prompts (MMCoA setting 3)",
    )


@hookimpl
def register_defenses(register):
    from .defense import MMCoA, factory

    register("mmcoa", factory, description=(MMCoA.__doc__ or "").strip().splitlines()[0])
