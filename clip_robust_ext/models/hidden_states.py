"""The vision tower's hidden states as LLaVA-style models read them.

LLaVA feeds its language model the penultimate layer's patch tokens of a transformers
`CLIPVisionModel` (`output_hidden_states=True`, `hidden_states[-2][:, 1:]`). The same tensor from
an open_clip ViT is the output of its second-to-last residual block, captured here with a forward
hook, so a robust tower can be compared with (or substituted for) its transformers export.
"""

from __future__ import annotations

import torch

from ..errors import ClipxUsageError


def vision_hidden_states(
    model: torch.nn.Module, images: torch.Tensor, layer: int = -2, patch_only: bool = True
) -> torch.Tensor:
    """Hidden states [batch, tokens, width] after residual block `layer` of an open_clip ViT
    (-2: the penultimate, as transformers' `hidden_states[-2]`); patch_only drops the class token
    (LLaVA's 'patch' feature selection)."""
    blocks = getattr(
        getattr(getattr(model, "visual", None), "transformer", None), "resblocks", None
    )
    if blocks is None:
        raise ClipxUsageError("hidden states need an open_clip ViT vision tower (no resblocks)")
    if not -len(blocks) <= layer < len(blocks):
        raise ClipxUsageError(f"layer {layer} out of range for a {len(blocks)}-layer tower")
    captured: list[torch.Tensor] = []
    hook = blocks[layer].register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model.encode_image(images)
    finally:
        hook.remove()
    states = captured[0]
    if not getattr(model.visual.transformer, "batch_first", True):
        states = states.transpose(0, 1)
    return states[:, 1:] if patch_only else states
