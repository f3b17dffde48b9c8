"""A learned prompt context (CoOp / APT): vectors that take the place of the template words.

With a context, the text of class c is `[SOT] v_1 .. v_n <class name> . [EOT]`, encoded by the
(frozen) text tower: the v_i are free vectors in token-embedding space, shared by every class,
plus an optional per-class offset for the classes they were trained on (classes without one,
e.g. held-out classes, use the shared vectors alone).

The context lives on the open_clip model as the submodule `prompt_context`, so whatever follows
the model's weights follows it with no extra plumbing: the state dict and every checkpoint written
from it (final.pt, .safetensors), `model_fingerprint` (evaluation result keys), the Trainer's
parameter selection (trainable = "prompt"), and the ZeroShotClassifier, whose class matrix is
built from the context and the class names (templates are not used then). Loading a checkpoint
that holds one attaches a context of its shape first (checkpoints.load_into_clip).

The vectors enter the text tower through a forward hook on its token embedding that replaces
the placeholder tokens' embeddings: open_clip's own encode_text (positional embedding, causal
mask, EOT pooling, projection) runs unchanged, for any open_clip text tower with a token table.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ClipxUsageError

PROMPT_ATTR = "prompt_context"  # attribute on the open_clip model = state-dict prefix
NAMES_BUFFER = "class_names_utf8"  # the class names the per-class offsets belong to
PLACEHOLDER = "X"  # the word whose token embeddings the context replaces (CoOp's choice)


def _encode_names(names: Sequence[str]) -> torch.Tensor:
    return torch.tensor(list("\n".join(names).encode()), dtype=torch.uint8)


def _decode_names(t: torch.Tensor) -> list[str]:
    text = bytes(t.tolist()).decode()
    return text.split("\n") if text else []


def token_embedding(clip: nn.Module) -> nn.Embedding:
    """The text tower's token table (open_clip CLIP, or CustomTextCLIP's TextTransformer)."""
    for owner in (clip, getattr(clip, "text", None)):
        table = getattr(owner, "token_embedding", None)
        if isinstance(table, nn.Embedding):
            return table
    raise ClipxUsageError(
        f"prompt context: {type(clip).__name__} has no text token embedding to place vectors in "
        "(prompt tuning needs an open_clip text transformer)"
    )


def placeholder_span(tokenizer, n_ctx: int) -> int:
    """Index of the first of the n_ctx placeholder tokens in a tokenized prompt (1 after SOT)."""
    empty = tokenizer([""])[0].tolist()
    marked = tokenizer([" ".join([PLACEHOLDER] * n_ctx)])[0].tolist()
    start = next((i for i, (a, b) in enumerate(zip(empty, marked)) if a != b), None)
    if (
        start is None
        or len(set(marked[start : start + n_ctx])) != 1
        or (marked[start + n_ctx] != empty[start])
    ):
        raise ClipxUsageError(
            f"prompt context: this tokenizer does not make '{PLACEHOLDER}' x {n_ctx} into "
            f"{n_ctx} single tokens; use fewer context vectors"
        )
    return start


class PromptContext(nn.Module):
    """shared: (n_ctx, width) vectors in front of every class name; specific: optional
    (len(classnames), n_ctx, width) offsets added for those classes."""

    def __init__(
        self,
        shared: torch.Tensor,
        classnames: Sequence[str] = (),
        specific: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if shared.ndim != 2 or shared.shape[0] < 1:
            raise ClipxUsageError(
                f"prompt context: shared vectors must be (n_ctx, width), got {tuple(shared.shape)}"
            )
        self.shared = nn.Parameter(shared.detach().clone().float())
        self.classnames = list(classnames)
        if specific is not None:
            want = (len(self.classnames), *shared.shape)
            if tuple(specific.shape) != want:
                raise ClipxUsageError(
                    f"prompt context: class-specific vectors must be {want} (one row per class "
                    f"name), got {tuple(specific.shape)}"
                )
            self.specific = nn.Parameter(specific.detach().clone().float())
            self.register_buffer(NAMES_BUFFER, _encode_names(self.classnames))
        else:
            self.specific = None

    @property
    def n_ctx(self) -> int:
        return self.shared.shape[0]

    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def vectors(self, classnames: Sequence[str]) -> torch.Tensor:
        """(C, n_ctx, width): the shared vectors plus each known class's own offset."""
        ctx = self.shared.unsqueeze(0).expand(len(classnames), -1, -1)
        if self.specific is None:
            return ctx
        rows = {c: i for i, c in enumerate(self.classnames)}
        index = torch.tensor([rows.get(c, len(rows)) for c in classnames], device=ctx.device)
        padded = torch.cat([self.specific, self.specific.new_zeros(1, *self.shared.shape)])
        return ctx + padded[index]

    def tokens(self, tokenizer, classnames: Sequence[str]) -> tuple[torch.Tensor, int]:
        """Token ids of `X .. X <name>.` per class and the index of the first placeholder."""
        start = placeholder_span(tokenizer, self.n_ctx)
        prefix = " ".join([PLACEHOLDER] * self.n_ctx)
        ids = tokenizer([f"{prefix} {name}." for name in classnames])
        # the tokenizer truncates silently: a cut prompt would lose its class name
        alone = tokenizer([f"{name}." for name in classnames])
        cut = ((ids != 0).sum(1) - (alone != 0).sum(1) != self.n_ctx).nonzero().flatten().tolist()
        if cut:
            raise ClipxUsageError(
                f"prompt context: {self.n_ctx} context vectors + class name "
                f"{classnames[cut[0]]!r} exceed the text context length ({ids.shape[1]} tokens); "
                "use fewer context vectors"
            )
        return ids, start

    def encode(
        self, clip: nn.Module, ids: torch.Tensor, start: int, vectors: torch.Tensor
    ) -> torch.Tensor:
        """Unnormalised text features of prompts `ids` with `vectors` (one row of n_ctx per
        prompt) in place of the placeholder embeddings at [start, start + n_ctx)."""
        end = start + self.n_ctx

        def splice(module, args, out):
            return torch.cat([out[:, :start], vectors.to(out.dtype), out[:, end:]], dim=1)

        handle = token_embedding(clip).register_forward_hook(splice)
        try:
            return clip.encode_text(ids)
        finally:
            handle.remove()

    @classmethod
    def initial(
        cls,
        clip: nn.Module,
        tokenizer,
        n_ctx: int | None = None,
        init: str = "",
        classnames: Sequence[str] = (),
        class_specific: bool = False,
    ) -> PromptContext:
        """A new context: the token embeddings of `init` words (n_ctx = their token count), or
        n_ctx vectors drawn N(0, 0.02^2) from torch's RNG (CoOp/APT); per-class offsets start 0."""
        table = token_embedding(clip).weight
        if init:
            ids = tokenizer([init])[0]
            empty = tokenizer([""])[0]
            start = placeholder_span(tokenizer, 1)
            count = int((ids != 0).sum() - (empty != 0).sum())
            if n_ctx is not None and n_ctx != count:
                raise ClipxUsageError(
                    f"prompt context: init {init!r} is {count} tokens but n_ctx = {n_ctx}; "
                    "drop n_ctx (it follows init) or change init"
                )
            shared = table[ids[start : start + count].to(table.device)].detach().clone().cpu()
        else:
            n_ctx = 16 if n_ctx is None else n_ctx
            if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
                raise ClipxUsageError(
                    f"prompt context: n_ctx must be an integer >= 1, got {n_ctx!r}"
                )
            shared = torch.randn(n_ctx, table.shape[1]) * 0.02
        specific = None
        if class_specific:
            if not classnames:
                raise ClipxUsageError("prompt context: class-specific vectors need class names")
            specific = torch.zeros(len(classnames), *shared.shape)
        context = cls(shared.to(table.device), classnames, specific)
        return context.to(table.device)


def prompt_context_of(clip: nn.Module) -> PromptContext | None:
    """The model's learned context, or None (plain template prompts)."""
    context = getattr(clip, PROMPT_ATTR, None)
    return context if isinstance(context, PromptContext) else None


def attach_prompt_context(clip: nn.Module, context: PromptContext | None) -> None:
    """Make `context` part of the open_clip model (None removes it)."""
    if context is None:
        if PROMPT_ATTR in clip._modules:
            del clip._modules[PROMPT_ATTR]
        return
    setattr(clip, PROMPT_ATTR, context)


def adopt_prompt_context(clip: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """If `state` holds a prompt context, attach an (uninitialised) one of its shape so that
    loading `state` fills it; a model's earlier context is replaced."""
    prefix = f"{PROMPT_ATTR}."
    shared = state.get(f"{prefix}shared")
    if shared is None:
        return
    specific = state.get(f"{prefix}specific")
    names = state.get(f"{prefix}{NAMES_BUFFER}")
    classnames = _decode_names(names) if names is not None else []
    context = PromptContext(
        torch.zeros(shared.shape),
        classnames,
        None if specific is None else torch.zeros(specific.shape),
    )
    device = next(clip.parameters()).device
    attach_prompt_context(clip, context.to(device))
