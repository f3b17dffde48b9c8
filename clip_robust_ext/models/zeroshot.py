"""CLIP as a plain image classifier that torchattacks and AutoAttack attack as is.

forward(images in [0, 1] at any resolution) -> logits = logit_scale * cos(image, class text)
(+ logit_bias for sigmoid-head models such as SigLIP, as open_clip scores them).
Resizing and CLIP normalisation happen inside, so eps lives in the dataset's pixel space.
The class text matrix is computed once per (text-tower weights, prompts) and cached: a forward
pass never runs the text tower (the TeCoA-lineage code re-encodes every prompt per forward).
A model with a learned prompt context (models/prompts.py) gets its class matrix from the context
and the class names instead; that cache also follows the context's values, and while the context
trains (grad enabled, context requires grad) the matrix is recomputed per forward, with its graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ClipxUsageError
from .clip import LoadedCLIP
from .prompts import PromptContext, prompt_context_of

DEFAULT_TEMPLATES: tuple[str, ...] = ("This is a photo of a {}",)


def build_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """`prompts[c][t]` = `templates[t]` filled with `classnames[c]`."""
    if not classnames:
        raise ClipxUsageError("no class names given")
    if not templates or any("{}" not in t for t in templates):
        raise ClipxUsageError(f"templates must each contain '{{}}', got {list(templates)[:3]}")
    return [[t.format(c) for t in templates] for c in classnames]


class ZeroShotClassifier(nn.Module):
    def __init__(
        self,
        clip: LoadedCLIP,
        classnames: Sequence[str] | None = None,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        prompts: Sequence[Sequence[str]] | None = None,
    ) -> None:
        super().__init__()
        self.loaded = clip
        self.clip = clip.model
        self.tokenizer = clip.tokenizer
        self.image_size = tuple(clip.image_size)
        self.register_buffer("mean", torch.tensor(clip.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(clip.std).view(1, -1, 1, 1), persistent=False)
        explicit = prompts is not None
        if prompts is None:
            if classnames is None:
                raise ClipxUsageError("ZeroShotClassifier needs classnames or prompts")
            prompts = build_prompts(classnames, templates)
        self.classnames = list(classnames) if classnames is not None else [p[0] for p in prompts]
        self.templates = list(templates)
        self.prompts: list[list[str]] = [list(p) for p in prompts]
        self._prompts_given = explicit
        self.text_calls = 0  # number of text-tower forward passes (tests and benchmarks read it)
        self._cache_key: tuple | None = None
        self._class_matrix: torch.Tensor | None = None
        self._context_values: list[torch.Tensor] = []

    # -- encoders ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.clip.parameters()).dtype

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images at any size -> normalised model input at the model's resolution."""
        if images.ndim != 4 or images.shape[1] != self.mean.shape[1]:
            raise ClipxUsageError(
                f"images must be (N, {self.mean.shape[1]}, H, W) floats in [0, 1], got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise ClipxUsageError(f"images must be float in [0, 1], got {images.dtype}")
        if tuple(images.shape[-2:]) != self.image_size:
            images = F.interpolate(
                images, size=self.image_size, mode="bicubic", align_corners=False
            )
        return ((images - self.mean) / self.std).to(self.dtype)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.preprocess(images)
        if self.loaded.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        encode = self.loaded.image_encoder or self.clip.encode_image
        feats = encode(x)
        return F.normalize(feats.float(), dim=-1) if normalize else feats.float()

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def encode_text(
        self, texts: Sequence[str] | torch.Tensor, normalize: bool = True, batch_size: int = 1024
    ) -> torch.Tensor:
        """Strings (or token ids) -> text embeddings, batched."""
        tokens = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
        outs = []
        for i in range(0, tokens.shape[0], batch_size):
            self.text_calls += 1
            outs.append(self.clip.encode_text(tokens[i : i + batch_size]).float())
        feats = torch.cat(outs) if outs else torch.empty(0, device=self.device)
        return F.normalize(feats, dim=-1) if normalize else feats

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp().float()

    def logit_bias(self) -> torch.Tensor | None:
        """The learned bias of a sigmoid head (SigLIP), None for softmax CLIPs. It shifts every
        class logit alike, so softmax losses and margins are unchanged; sigmoid scores are not."""
        bias = getattr(self.clip, "logit_bias", None)
        return None if bias is None else bias.float()

    # -- the cached zero-shot head ------------------------------------------------------------
    def _text_weights_key(self) -> tuple:
        """(storage, version) of every parameter outside the `visual` submodule.

        logit_scale / logit_bias do not enter the text matrix; the Trainer clamps logit_scale in
        place every step, which bumps its version and would re-encode every prompt per step.
        This runs on every forward, so it walks `_modules` / `_parameters` directly:
        `named_parameters()` builds a dotted name per parameter, which cost ~0.5 ms per forward
        on clipx-small and ~1.5 ms on ViT-B/32 (now ~0.08 / 0.17 ms; benchmarks/)."""
        clip = self.clip
        params = [p for n, p in clip._parameters.items() if n not in ("logit_scale", "logit_bias")]
        stack = [m for n, m in clip._modules.items() if n != "visual" and m is not None]
        while stack:
            module = stack.pop()
            params.extend(module._parameters.values())
            stack.extend(m for m in module._modules.values() if m is not None)
        return tuple((p.data_ptr(), p._version) for p in params if p is not None)

    def text_matrix(self, prompts: Sequence[Sequence[str]]) -> torch.Tensor:
        """(C, D) normalised class embeddings: mean over each class's prompts, renormalised."""
        counts = {len(p) for p in prompts}
        flat = [t for p in prompts for t in p]
        with torch.no_grad():
            feats = self.encode_text(flat)
            if len(counts) == 1:
                feats = feats.view(len(prompts), counts.pop(), -1).mean(1)
            else:
                splits = torch.split(feats, [len(p) for p in prompts])
                feats = torch.stack([s.mean(0) for s in splits])
        return F.normalize(feats, dim=-1)

    def class_matrix(self) -> torch.Tensor:
        """Cached; recomputed only when text-tower weights or prompts change."""
        context = prompt_context_of(self.clip)
        if context is not None:
            return self._context_matrix(context)
        key = (self._text_weights_key(), self.device, tuple(map(tuple, self.prompts)))
        if self._class_matrix is None or key != self._cache_key:
            self._class_matrix = self.text_matrix(self.prompts)
            self._cache_key = key
        return self._class_matrix

    def context_features(self, context: PromptContext) -> torch.Tensor:
        """(C, D) normalised class embeddings of `context` + each class name (differentiable)."""
        ids, start = context.tokens(self.tokenizer, self.classnames)
        ids, vectors = ids.to(self.device), context.vectors(self.classnames)
        outs = []
        for i in range(0, ids.shape[0], 1024):
            self.text_calls += 1
            outs.append(context.encode(self.clip, ids[i : i + 1024], start, vectors[i : i + 1024]))
        return F.normalize(torch.cat(outs).float(), dim=-1)

    def _context_matrix(self, context: PromptContext) -> torch.Tensor:
        """The class matrix of a learned context: with its graph while the context trains;
        otherwise cached on (text weights, class names, context values): a value compare, so an
        edit through `.data` (which bumps no version counter) is seen too."""
        if self._prompts_given:
            raise ClipxUsageError(
                "this model has a learned prompt context: its classes are the context + class "
                "names; prompts given as strings (class descriptions, text attacks) would bypass it"
            )
        if torch.is_grad_enabled() and context.trainable():
            return self.context_features(context)
        values = [p.detach() for p in context.parameters()]
        key = (self._text_weights_key(), self.device, tuple(self.classnames), id(context))
        fresh = (
            self._class_matrix is not None
            and key == self._cache_key
            and all(torch.equal(a, b) for a, b in zip(values, self._context_values))
        )
        if not fresh:
            with torch.no_grad():
                self._class_matrix = self.context_features(context)
            self._cache_key = key
            self._context_values = [v.clone() for v in values]
        return self._class_matrix

    def set_prompts(self, prompts: Sequence[Sequence[str]]) -> None:
        self.prompts = [list(p) for p in prompts]

    def with_prompts(self, prompts: Sequence[Sequence[str]]) -> ZeroShotClassifier:
        """A classifier over other prompts that shares this one's CLIP (no second copy)."""
        return ZeroShotClassifier(self.loaded, classnames=self.classnames, prompts=prompts)

    @property
    def num_classes(self) -> int:
        return len(self.prompts)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.encode_image(images)
        logits = self.logit_scale() * feats @ self.class_matrix().t()
        bias = self.logit_bias()
        return logits if bias is None else logits + bias
