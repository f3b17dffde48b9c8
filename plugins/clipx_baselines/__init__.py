"""Built-in plugin: the baseline defenses (FT-standard, TeCoA, PMG-AFT, FARE, and Gaussian noise
augmentation for randomized smoothing) and the offline small CLIP pre-trained on the procedural
shapes ("procedural-small").

Fidelity to the authors' code (docs/FIDELITY.md): TeCoA and FARE equal theirs (FARE's
AdamW-on-every-parameter is TrainConfig.decay_all_params); PMG-AFT's default logits = "cosine"
is their objective (their wrapper removes the logit scale), logits = "scaled" the 100 x cos one."""

from clip_robust_ext import hookimpl


@hookimpl
def register_defenses(register):
    from .defenses import DEFENSES, factory  # imports open_clip: only when defenses are asked for

    for name, cls in DEFENSES.items():
        register(name, factory(cls), description=(cls.__doc__ or "").strip().splitlines()[0])


@hookimpl
def register_models(register):
    from clip_robust_ext.api import procedural_small_model

    register(
        "procedural-small",
        procedural_small_model,
        description="clipx-tiny-rn contrastively pre-trained on ProceduralShapes (cached by content hash)",
    )
