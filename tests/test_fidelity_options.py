"""Every reference-code option of docs/FIDELITY.md is accepted in recipes (checked before any work
starts) and shown by `clipx recipe show` (the resolved recipe)."""

from __future__ import annotations

import pytest

from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.recipes import resolve

OPTIONS = [
    ("tecoa", ['defense.name="pmg-aft"', 'defense.logits="scaled"'], 'logits = "scaled"'),
    ("tecoa", ['defense.name="fare"', 'defense.inner_attack="apgd"'], 'inner_attack = "apgd"'),
    ("mmcoa", ["defense.leak_attack_gradients=true"], "leak_attack_gradients = true"),
    ("mmcoa", ['defense.substitutes_from="previous-token"'], 'substitutes_from = "previous-token"'),
    ("mmcoa", ['defense.stopwords="reference"'], 'stopwords = "reference"'),
    ("mmcoa", ["defense.decay_all_params=true"], "decay_all_params = true"),
    (
        "mmcoa",
        ['evaluate.attacks.2.image_target="clean-prompts"'],
        'image_target = "clean-prompts"',
    ),
    (
        "coattack-retrieval",
        ['evaluate.caption_targets="last-caption"'],
        'caption_targets = "last-caption"',
    ),
    ("tecoa", ["evaluate.resolution=224"], "resolution = 224"),
]


@pytest.mark.parametrize(("recipe", "sets", "shown"), OPTIONS)
def test_option_is_accepted_and_shown(recipe, sets, shown):
    assert shown in resolve(recipe, None, sets).to_toml()


@pytest.mark.parametrize(
    ("recipe", "sets"),
    [
        ("tecoa", ['defense.name="pmg-aft"', 'defense.logits="temperature"']),
        ("mmcoa", ['defense.stopwords="nltk"']),
        ("mmcoa", ['evaluate.attacks.2.image_target="clean"']),
        ("coattack-retrieval", ['evaluate.caption_targets="first-caption"']),
        ("tecoa", ["evaluate.resolution=2"]),
    ],
)
def test_bad_values_are_usage_errors_before_any_work(recipe, sets):
    with pytest.raises(ClipxUsageError):
        resolve(recipe, None, sets)


def test_paper_profiles_use_the_reference_settings_that_are_not_defects():
    mmcoa = resolve("mmcoa", "paper").to_toml()
    for shown in ('image_target = "clean-prompts"', "decay_all_params = true", 'schedule = "constant"',
                  "clamp_logit_scale = false", 'amp = "off"'):  # fmt: skip
        assert shown in mmcoa
    assert "leak_attack_gradients" not in mmcoa  # defects stay opt-in
    assert 'caption_targets = "last-caption"' in resolve("coattack-retrieval", "paper").to_toml()
