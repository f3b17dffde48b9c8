"""Text attacks on CLIP through TextAttack (BERT-Attack-style word swaps, WordNet, char edits).

Importing this package does not import TextAttack; it is imported (offline-safe, env.py) when a
text attack first runs. Public API:
  TextAttackConfig, TextAttackRecord         settings and per-text results
  CLIPTextAttacker                           attack strings against a classifier's text tower
  attack_class_prompts, CaptionAttackCache   the two targets: class prompts (cached) / captions
  TextAttackOnPrompts, MultimodalAttack      registered attack shapes ("text-attack", "multimodal")
  import_textattack, stopwords               the offline guard and clipx's stop-word list
"""

from __future__ import annotations

from ...utils.lazy import lazy_exports
from .config import GOALS, TARGETS, TRANSFORMATIONS, TextAttackConfig, TextAttackRecord
from .env import import_textattack, stopwords

_LAZY = {
    "CLIPTextAttacker": ".attacker",
    "TEXTATTACK_CALLS": ".attacker",
    "attack_class_prompts": ".targets",
    "CaptionAttackCache": ".targets",
    "PromptAttackResult": ".targets",
    "TextAttackOnPrompts": ".classifier",
    "MultimodalAttack": ".classifier",
    "image_centroids": ".classifier",
}

__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "GOALS",
    "TARGETS",
    "TRANSFORMATIONS",
    "TextAttackConfig",
    "TextAttackRecord",
    "import_textattack",
    "stopwords",
    *_LAZY,
]
