"""Each paper profile sets the options docs/FIDELITY.md ("Paper profiles") names for it: the
table in the docs must equal the list below, and every row must hold in the resolved profile."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import tomllib

from clip_robust_ext.recipes import resolve

DOC = Path(__file__).resolve().parents[1] / "docs" / "FIDELITY.md"

# (recipe, profile, dotted key, value); "laat-paper" is `clipx laat paper` (paper.toml)
EXPECTED = [
    ("mmcoa", "paper", "defense.params.text_refresh_steps", 1),
    ("mmcoa", "paper", "defense.params.stopwords", "reference"),
    ("mmcoa", "paper", "defense.train.decay_all_params", True),
    ("mmcoa", "paper", "defense.train.schedule", "constant"),
    ("mmcoa", "paper", "defense.train.clamp_logit_scale", False),
    ("mmcoa", "paper", "defense.train.amp", "off"),
    ("mmcoa", "paper", "evaluate.attacks.1.params.stopwords", "reference"),
    ("mmcoa", "paper", "evaluate.attacks.2.params.image_target", "clean-prompts"),
    ("mmcoa", "paper", "evaluate.attacks.2.params.stopwords", "reference"),
    ("coattack-retrieval", "paper", "evaluate.galleries.pre_caption", True),
    ("coattack-retrieval", "paper", "evaluate.text_attack.stopwords", "reference"),
    ("coattack-retrieval", "paper", "evaluate.text_attack.transformation", "bert-mlm"),
    ("coattack-retrieval", "paper", "evaluate.caption_targets", "last-caption"),
    ("sga", "paper", "evaluate.galleries.pre_caption", True),
    ("sga", "paper", "evaluate.text_attack.stopwords", "reference"),
    ("sga", "paper", "evaluate.text_attack.transformation", "bert-mlm"),
    ("sga", "paper", "evaluate.text_attack.max_length", 77),
    ("sga", "paper", "evaluate.attack_params.sga.guide_max_tokens", 30),
    ("apt", "paper", "model.arch", "zoo:tecoa1-vitb32"),
    ("apt", "paper", "defense.params.pgd_update", "reference"),
    ("apt", "paper", "defense.params.augment", "resized-crop-flip"),
    ("apt", "paper", "defense.params.n_ctx", 16),
    ("apt", "paper", "defense.params.steps", 3),
    ("apt", "paper", "defense.train.schedule", "cosine"),
    ("laat-paper", "paper", "use_linear", True),
    ("laat-paper", "paper", "select_episodes", 100),
    ("laat-paper", "resnet12", "backbone", "resnet12-640"),
    ("laat-paper", "resnet12", "use_linear", True),
    ("laat-paper", "resnet12", "select_episodes", 100),
]
ROW = re.compile(r"^\| `([\w-]+) --profile (\w+)` \| `([\w.]+)` \| `([^`]+)` \|")


def _doc_rows() -> list[tuple[str, str, str, Any]]:
    text = DOC.read_text().split("## Paper profiles", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            recipe, profile, key, value = m.groups()
            rows.append((recipe, profile, key, tomllib.loads(f"v = {value}")["v"]))
    return rows


def _resolved(recipe: str, profile: str) -> dict[str, Any]:
    if recipe == "laat-paper":
        from clipx_laat.cli import load_paper_config
        from clipx_laat.paper import PaperConfig

        doc = load_paper_config(None, profile)
        PaperConfig.from_dict(doc)  # the profile is a valid paper-mode configuration
        return doc
    return tomllib.loads(resolve(recipe, profile).to_toml())


def _get(doc: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def test_the_docs_table_lists_exactly_these_options():
    assert _doc_rows() == EXPECTED


@pytest.mark.parametrize(("recipe", "profile", "key", "value"), EXPECTED)
def test_paper_profile_sets_the_option(recipe, profile, key, value):
    assert _get(_resolved(recipe, profile), key) == value


def test_defects_stay_opt_in():
    for recipe in ("mmcoa", "coattack-retrieval", "sga"):
        shown = resolve(recipe, "paper").to_toml()
        assert "leak_attack_gradients" not in shown and "previous-token" not in shown
