"""ZeroShotClassifier: shapes, normalisation inside, cached text head and its invalidation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_clip

from clip_robust_ext.errors import ClipxUsageError
from clip_robust_ext.models import ZeroShotClassifier, build_prompts, load_clip

CLASSES = ["circle", "square", "triangle"]


def test_logits_shape_and_definition():
    loaded = tiny_clip()
    zs = ZeroShotClassifier(loaded, CLASSES, templates=["a {}", "a photo of a {}"])
    x = torch.rand(5, 3, 32, 32)
    logits = zs(x)
    assert logits.shape == (5, 3)
    # logits = logit_scale * cos(image, mean of normalised template embeddings, renormalised)
    model = loaded.model
    norm = (x - torch.tensor(loaded.mean).view(1, 3, 1, 1)) / torch.tensor(loaded.std).view(
        1, 3, 1, 1
    )
    img = F.normalize(model.encode_image(norm), dim=-1)
    tok = loaded.tokenizer(
        [p for c in build_prompts(CLASSES, ["a {}", "a photo of a {}"]) for p in c]
    )
    txt = F.normalize(model.encode_text(tok), dim=-1).view(3, 2, -1).mean(1)
    txt = F.normalize(txt, dim=-1)
    expected = model.logit_scale.exp() * img @ txt.t()
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_resizes_inside_to_model_resolution():
    zs = ZeroShotClassifier(tiny_clip(), CLASSES)
    x = torch.rand(2, 3, 64, 64)
    assert zs(x).shape == (2, 3)
    pre = zs.preprocess(x)
    assert pre.shape[-2:] == (32, 32)
    # normalisation inside: a mid-grey image maps to (0.5 - mean) / std
    grey = torch.full((1, 3, 32, 32), 0.5)
    expected = (0.5 - zs.mean) / zs.std
    torch.testing.assert_close(zs.preprocess(grey), expected.expand(1, 3, 32, 32))


def test_forward_encodes_no_text_and_cache_invalidates_on_weight_change():
    zs = ZeroShotClassifier(tiny_clip(), CLASSES)
    x = torch.rand(4, 3, 32, 32)
    zs(x)
    calls = zs.text_calls
    for _ in range(3):
        zs(x)
    assert zs.text_calls == calls, "forward must not run the text tower once the head is cached"
    before = zs.class_matrix().clone()
    with torch.no_grad():
        zs.clip.token_embedding.weight.add_(0.5)  # text weights change -> head recomputed
    after = zs.class_matrix()
    assert zs.text_calls == calls + 1
    assert not torch.allclose(before, after)
    with torch.no_grad():
        zs.clip.visual.conv1.weight.add_(0.5)  # vision weights do not touch the head
    zs(x)
    assert zs.text_calls == calls + 1


def test_prompt_change_recomputes_and_with_prompts_shares_model():
    zs = ZeroShotClassifier(tiny_clip(), CLASSES)
    zs.class_matrix()
    other = zs.with_prompts([["a dog"], ["a cat"], ["a cow"]])
    assert other.clip is zs.clip
    assert not torch.allclose(other.class_matrix(), zs.class_matrix())


def test_bad_images_are_usage_errors():
    zs = ZeroShotClassifier(tiny_clip(), CLASSES)
    with pytest.raises(ClipxUsageError, match="images must be"):
        zs(torch.rand(3, 32, 32))
    with pytest.raises(ClipxUsageError, match="float"):
        zs(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ClipxUsageError, match="templates"):
        ZeroShotClassifier(tiny_clip(), CLASSES, templates=["no placeholder"])


def test_unknown_architecture_names_closest():
    with pytest.raises(ClipxUsageError, match="did you mean 'clipx-tiny'"):
        load_clip("clipx-tinny")
