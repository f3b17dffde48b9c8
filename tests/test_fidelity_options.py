"""Bad values of the reference-code options (docs/FIDELITY.md) are usage errors before any work
starts. What each option does is tested against the reference's behaviour in the files the
docs' options table names; what the paper profiles set, in test_paper_profiles.py."""

from __future__ import annotations

import pytest

from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.recipes import resolve


@pytest.mark.parametrize(
    ("recipe", "sets"),
    [
        ("tecoa", ['defense.name="pmg-aft"', 'defense.logits="temperature"']),
        ("tecoa", ['defense.name="fare"', 'defense.inner_attack="apgd-paper"']),
        ("mmcoa", ['defense.stopwords="nltk"']),
        ("mmcoa", ['evaluate.attacks.2.image_target="clean"']),
        ("coattack-retrieval", ['evaluate.caption_targets="first-caption"']),
        ("coattack-retrieval", ['evaluate.galleries.pre_caption="yes"']),
        ("coattack-retrieval", ["evaluate.galleries.pre_caption=0"]),
        ("apt", ['defense.pgd_update="clamp"']),
        ("apt", ['defense.augment="crop"']),
        ("tecoa", ["evaluate.resolution=2"]),
    ],
)
def test_bad_values_are_usage_errors_before_any_work(recipe, sets):
    with pytest.raises(ClipxUsageError):
        resolve(recipe, None, sets)
