"""LAAT (Li et al., CVPR 2024): language-driven anchors for zero-shot adversarial robustness.

Two uses, one plugin: the `laat` defense (CLIP mode: fine-tune the CLIP image tower against
expanded text anchors, run by the recipe runner) and `clipx laat paper` (paper mode: a small
backbone trained from scratch against frozen anchors, zero-shot on novel classes).

Fidelity to the authors' code (docs/FIDELITY.md#laat):
expansion and losses equal theirs. Paper-mode options reproduce their train.py where it differs:
select_epoch = "best-robust-on-test" (their model selection on test-split episodes, optimistic;
default "last"), backbone = "resnet12-640" with drop_rate / dropblock_size (their ResNet-12),
use_linear (their --use_linear)."""

from clip_robust_ext import hookimpl
from clip_robust_ext.api import lazy_exports

# re-exports load on first use (they import torch): loading the plugin stays cheap
_EXPORTS = {
    **dict.fromkeys(
        [
            "Expansion",
            "apply_expansion",
            "fit_expansion",
            "invert_expansion",
            "mean_pairwise_cosine",
        ],
        ".expansion",
    ),
    **dict.fromkeys(["ace_loss", "laat_loss", "smoothing_loss"], ".losses"),
}
__getattr__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "Expansion",
    "ace_loss",
    "apply_expansion",
    "fit_expansion",
    "invert_expansion",
    "laat_loss",
    "mean_pairwise_cosine",
    "smoothing_loss",
]


@hookimpl
def register_defenses(register):
    from .defense import LAAT

    register("laat", LAAT, description=LAAT.__doc__.strip().splitlines()[0])


@hookimpl
def register_commands(cli):
    from .cli import register

    register(cli)
