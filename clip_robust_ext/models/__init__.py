"""CLIP loading, the zero-shot classifier wrapper and checkpoint formats."""

from .checkpoints import load_into_clip, read_state_dict, save_open_clip_checkpoint
from .clip import LoadedCLIP, load_clip, register_model_config
from .hidden_states import vision_hidden_states
from .prompts import PromptContext, attach_prompt_context, prompt_context_of
from .zeroshot import DEFAULT_TEMPLATES, ZeroShotClassifier, build_prompts

__all__ = [
    "DEFAULT_TEMPLATES",
    "LoadedCLIP",
    "PromptContext",
    "ZeroShotClassifier",
    "attach_prompt_context",
    "build_prompts",
    "load_clip",
    "load_into_clip",
    "prompt_context_of",
    "read_state_dict",
    "register_model_config",
    "save_open_clip_checkpoint",
    "vision_hidden_states",
]
