"""The CLIP text tower as a TextAttack victim model.

Importing this module imports TextAttack (offline-safe, see env.py); nothing in
`clip_robust_ext` imports it eagerly, so `import clip_robust_ext` stays TextAttack-free.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...models import ZeroShotClassifier
from .env import import_textattack

_ta = import_textattack()


class CLIPTextModelWrapper(_ta.models.wrappers.ModelWrapper):
    """strings -> normalised CLIP text embeddings (N, D), or zero-shot scores (N, K) against a
    fixed reference matrix `anchors` (K, D) of normalised embeddings (e.g. class image centroids or
    clean class text embeddings): scores = logit_scale * cos(text, anchor).

    `.model` is the CLIP module (TextAttack's goal functions read `model_wrapper.model`). Texts are
    encoded in batches of `batch_size` under no_grad; `queries` counts the strings encoded."""

    def __init__(
        self,
        classifier: ZeroShotClassifier,
        anchors: torch.Tensor | None = None,
        batch_size: int = 256,
    ) -> None:
        self.classifier = classifier
        self.model = classifier.clip
        self.batch_size = batch_size
        self.set_anchors(anchors)
        self.queries = 0

    def set_anchors(self, anchors: torch.Tensor | None) -> None:
        self.anchors = (
            None if anchors is None else anchors.detach().float().to(self.classifier.device)
        )

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) normalised fp32 text embeddings on the CPU."""
        texts = [str(t) for t in texts]
        self.queries += len(texts)
        with torch.no_grad(), torch.autocast(self.classifier.device.type, enabled=False):
            feats = self.classifier.encode_text(texts, normalize=True, batch_size=self.batch_size)
        return feats.float().cpu()

    def __call__(self, text_input_list: Sequence[str], **kwargs) -> torch.Tensor:
        feats = self.embed(text_input_list)
        if self.anchors is None:
            return feats
        with torch.no_grad():
            scale = float(self.classifier.logit_scale())
        return scale * feats @ self.anchors.cpu().t()
