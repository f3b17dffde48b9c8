"""SAFT (Zhang et al., 2026): description sets, the semantic-ensemble attack, the SAFT defense,
TGA-ZSR as a baseline, and the attack-text x evaluation-text protocol.

Registered through the `clipx` entry point `saft`, like any third-party plugin.

Fidelity to the authors' code (docs/FIDELITY.md#saft--tga-zsr): attack,
losses and hyper-parameters equal theirs; attention tokens are normalised per token (theirs: over
the token axis), short description lists are padded by cycling, and the ensemble head averages
embeddings (theirs: logits of the K selected). Documented, no switch."""

from clip_robust_ext import hookimpl
from clip_robust_ext.api import lazy_exports

# re-exports load on first use (they import torch): loading the plugin stays cheap
_EXPORTS = {
    **dict.fromkeys(["DescriptionBank", "SemanticEnsemblePGD", "semantic_ensemble"], ".attack"),
    **dict.fromkeys(["SAFT", "TGAZSR"], ".defense"),
    **dict.fromkeys(
        [
            "ClassDescriptions",
            "build_class_descriptions",
            "load_description_file",
            "match_classes",
            "refine_by_name_similarity",
            "shipped_sets",
        ],
        ".descriptions",
    ),
    **dict.fromkeys(
        ["evaluate_grid", "grid_markdown", "saft_ensemble", "saft_template"], ".protocol"
    ),
}
__getattr__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "SAFT",
    "TGAZSR",
    "ClassDescriptions",
    "DescriptionBank",
    "SemanticEnsemblePGD",
    "build_class_descriptions",
    "evaluate_grid",
    "grid_markdown",
    "load_description_file",
    "match_classes",
    "refine_by_name_similarity",
    "semantic_ensemble",
    "shipped_sets",
]


@hookimpl
def register_templates(register):
    from .descriptions import SHIPPED, shipped_sets

    for name, data in shipped_sets().items():
        register(name, data, description=SHIPPED[name][1])


@hookimpl
def register_attacks(register):
    from .attack import semantic_ensemble

    register(
        "semantic-ensemble",
        semantic_ensemble,
        modality="image",
        description="SAFT's PGD on the mean CE over K description classifiers (eps, alpha, steps, descriptions, k)",
    )


@hookimpl
def register_defenses(register):
    from .defense import SAFT, TGAZSR

    register(
        "saft",
        SAFT,
        description="semantic-aware adversarial fine-tuning (ensemble CE + attention terms)",
    )
    register(
        "tga-zsr",
        TGAZSR,
        description="TGA-ZSR: TeCoA + text-guided attention refinement/constraint",
    )


@hookimpl
def register_evaluators(register):
    from .protocol import saft_ensemble, saft_template

    register(
        "saft-template",
        saft_template,
        description="template PGD + semantic-ensemble attack, scored with the single template (PGD-100, 1/255)",
    )
    register(
        "saft-ensemble",
        saft_ensemble,
        description="template PGD + semantic-ensemble attack, scored with a description set (set descriptions=)",
    )


@hookimpl
def register_commands(cli):
    from .cli import register

    register(cli)
