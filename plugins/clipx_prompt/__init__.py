"""Adversarial prompt tuning: APT (Li et al., "One Prompt Word is Enough to Boost the Adversarial
Robustness of Pre-trained Vision-Language Models", CVPR 2024).

The defense trains only a prompt context (shared vectors, optionally per-class offsets) placed in
front of the class names; both towers stay frozen. The context is part of the model
(`clip_robust_ext.api.PromptContext`), so checkpoints, evaluation and result keys carry it."""

from clip_robust_ext import hookimpl


@hookimpl
def register_defenses(register):
    from .defense import APT, factory

    register("apt", factory(APT), description=APT.__doc__.strip().splitlines()[0])
