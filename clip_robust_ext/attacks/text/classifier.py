"""Text and multimodal attacks on a ZeroShotClassifier, in the registered-attack shape:
`attack(images, labels) -> AttackOutput(images, model=classifier over perturbed prompts, info)`.

"text-attack": the class prompts are attacked (target "prompts"), images pass unchanged.
"multimodal": the same perturbed-prompt classifier, then image PGD against it (MMCoA's setting 3:
image attack + text attack on the class prompts).

Each time the class prompts are actually attacked (not served from the cache), one line goes to
stderr with the threat-model numbers and the goal score (KL mean/max), so a recipe's log shows what
the text attack did; the same numbers are in `AttackOutput.info`.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from ...errors import ClipxUsageError
from ...models import ZeroShotClassifier
from ...utils.eps import parse_eps
from ..base import AttackOutput, build_attack
from ..checks import verify_adversarial
from .attacker import CLIPTextAttacker
from .config import TextAttackConfig
from .targets import (
    PromptAttackResult,
    attack_class_prompts,
    cached_prompt_attack,
    prompt_cache_key,
)


def config_from_params(**params: Any) -> tuple[TextAttackConfig, Any, Any]:
    """(config, masked-LM object or None, tokenizer or None) from attack parameters."""
    masked_lm = params.pop("masked_lm", TextAttackConfig.masked_lm)
    tokenizer = params.pop("tokenizer", None)
    allowed = set(TextAttackConfig.__dataclass_fields__)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ClipxUsageError(
            f"text attack: unknown parameter(s) {unknown}; accepted: {sorted(allowed | {'masked_lm', 'tokenizer'})}"
        )
    if isinstance(masked_lm, str):
        return TextAttackConfig(masked_lm=masked_lm, **params), None, tokenizer
    return TextAttackConfig(**params), masked_lm, tokenizer


def class_anchors(classifier: ZeroShotClassifier, anchors: Any) -> torch.Tensor | None:
    """Reference embeddings for goal "zero-shot": "text" = the clean class text matrix (image-free,
    so the cached result does not depend on which images came first), or a (C, D) tensor such as
    per-class image-embedding centroids (see `image_centroids`)."""
    if isinstance(anchors, torch.Tensor):
        if anchors.ndim != 2 or anchors.shape[0] != classifier.num_classes:
            raise ClipxUsageError(
                f"anchors must be ({classifier.num_classes}, D), got {tuple(anchors.shape)}"
            )
        return torch.nn.functional.normalize(anchors.detach().float(), dim=-1)
    if anchors == "text":
        return classifier.class_matrix().detach().clone()
    raise ClipxUsageError(f"anchors must be 'text' or a (C, D) tensor, got {anchors!r}")


def image_centroids(
    classifier: ZeroShotClassifier, images: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """(C, D) normalised mean image embedding per class (classes without images get zeros)."""
    with torch.no_grad():
        feats = classifier.encode_image(images)
    out = torch.zeros(classifier.num_classes, feats.shape[1], device=feats.device)
    out.index_add_(0, labels.to(feats.device), feats)
    return torch.nn.functional.normalize(out, dim=-1)


def report_line(summary: dict[str, Any]) -> str:
    """One line: prompts perturbed / skipped, words changed, goal score, an example."""
    goal = summary["goal"]
    score = "KL" if goal == "kl" else "1 - p(class)"
    line = (
        f"text-attack ({summary['transformation']}, goal {goal}): "
        f"{summary['prompts_perturbed']}/{summary['prompts_total']} class prompts perturbed, "
        f"{summary['prompts_skipped']} skipped, at most {summary['words_changed_max']} word(s) changed "
        f"per prompt; {score} mean {summary['goal_score_mean']:.4g}, max {summary['goal_score_max']:.4g}"
    )
    if summary["examples"]:
        line += f"; e.g. '{summary['examples'][0]}'"
    return line


class PerturbedPromptClassifier(ZeroShotClassifier):
    """The classifier over perturbed prompts. It shares the original's CLIP, so its train/eval flag
    is that CLIP's: attacks run under `attack_mode` (eval), and a flag copied then would stay False
    after the original returned to train mode. Setting the flag is a no-op; `.train()` / `.eval()`
    reach the shared CLIP through the module tree as before."""

    @property
    def training(self) -> bool:  # type: ignore[override]
        clip = self.__dict__.get("_modules", {}).get("clip")
        return bool(clip.training) if clip is not None else False

    @training.setter
    def training(self, value: bool) -> None:
        pass


class TextAttackOnPrompts:
    """Registered "text-attack": perturb the classifier's class prompts once, serve every batch."""

    modality = "text"
    eps = 0.0  # images are not perturbed
    norm = "Linf"

    def __init__(
        self,
        model: ZeroShotClassifier,
        target: str = "prompts",
        anchors: Any = "text",
        **params: Any,
    ):
        if not isinstance(model, ZeroShotClassifier):
            raise ClipxUsageError(
                "text-attack needs a ZeroShotClassifier (its class prompts are attacked)"
            )
        if target != "prompts":
            raise ClipxUsageError(
                f"text-attack on a classifier attacks its class prompts (target='prompts'), got target={target!r}; "
                "per-sample captions are attacked during training (defense 'mmcoa', CaptionAttackCache)"
            )
        self.model = model
        self.target = target
        self.config, masked_lm, tokenizer = config_from_params(**params)
        self._anchors_spec = anchors
        self.attacker = CLIPTextAttacker(
            model, self.config, anchors=None, masked_lm=masked_lm, tokenizer=tokenizer
        )
        self._perturbed: dict[tuple, ZeroShotClassifier] = {}
        # the latest perturbed prompts and their records
        self.result: PromptAttackResult | None = None

    def _sync_anchors(self) -> None:
        if self.config.goal == "zero-shot":
            self.attacker.anchors = class_anchors(self.model, self._anchors_spec)

    def perturbed_classifier(self) -> tuple[ZeroShotClassifier, dict[str, Any]]:
        self._sync_anchors()
        key = prompt_cache_key(self.model, self.attacker)
        cached = key in self._perturbed
        if not cached:
            fresh = cached_prompt_attack(self.model, self.attacker) is None
            result = self.result = attack_class_prompts(self.model, self.attacker)
            victim = PerturbedPromptClassifier(
                self.model.loaded, classnames=self.model.classnames, prompts=result.prompts
            ).to(self.model.device)
            self._perturbed = {key: victim}  # one model version at a time
            self._summary = {
                "target": self.target,
                "goal": self.config.goal,
                "transformation": self.config.transformation,
                **result.summary(),
            }
            if fresh:
                from tqdm.auto import tqdm

                # tqdm.write: on a line of its own even while an evaluation progress bar is drawn
                tqdm.write(f"clipx: {report_line(self._summary)}", file=sys.stderr)
        return self._perturbed[key], {**self._summary, "cached": cached}

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> AttackOutput:
        victim, info = self.perturbed_classifier()
        return AttackOutput(images=images, model=victim, info=info)

    def __repr__(self) -> str:
        return f"TextAttackOnPrompts({self.config})"


class MultimodalAttack:
    """Registered "multimodal": text attack on the class prompts + image attack (PGD by default);
    the images are scored against the perturbed prompts.

    image_target: which classifier the image attack maximises the loss of
      "perturbed-prompts" (default): the perturbed-prompt classifier it is scored with (stronger:
        image and text perturbations are chosen together);
      "clean-prompts": the clean classifier, as MMCoA's test.py does (its setting 3, the paper's
        numbers); the images are still scored against the perturbed prompts.
    See docs/FIDELITY.md#mmcoa. Results record the choice (info["image_target"])."""

    modality = "multimodal"
    norm = "Linf"
    IMAGE_TARGETS = ("perturbed-prompts", "clean-prompts")

    def __init__(
        self,
        model: ZeroShotClassifier,
        eps: float | str = "1/255",
        alpha: float | str = "1/255",
        steps: int = 10,
        image_attack: str = "pgd",
        random_start: bool = True,
        image_target: str = "perturbed-prompts",
        **text_params: Any,
    ):
        if image_target not in self.IMAGE_TARGETS:
            raise ClipxUsageError(
                f"multimodal: image_target must be one of {self.IMAGE_TARGETS}, got {image_target!r}"
            )
        self.image_target = image_target
        self.text = TextAttackOnPrompts(model, **text_params)
        self.eps = parse_eps(eps, name="eps")
        self.alpha = parse_eps(alpha, name="alpha")
        if not isinstance(steps, int) or steps < 1:
            raise ClipxUsageError(f"multimodal: steps must be a positive integer, got {steps!r}")
        self.steps, self.image_attack, self.random_start = steps, image_attack, random_start
        self._image: tuple[ZeroShotClassifier, Any] | None = None

    def _image_attack_for(self, victim: ZeroShotClassifier):
        if self._image is None or self._image[0] is not victim:
            params: dict[str, Any] = {"eps": self.eps, "alpha": self.alpha, "steps": self.steps}
            if self.image_attack == "pgd":
                params["random_start"] = self.random_start
            self._image = (victim, build_attack(self.image_attack, victim, **params))
        return self._image[1]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> AttackOutput:
        victim, info = self.text.perturbed_classifier()
        target = victim if self.image_target == "perturbed-prompts" else self.text.model
        adv = self._image_attack_for(target)(images, labels).images
        verify_adversarial(images, adv, self.eps, "Linf", "multimodal")
        info.update(
            image_attack=self.image_attack,
            image_target=self.image_target,
            eps=self.eps,
            alpha=self.alpha,
            steps=self.steps,
        )
        return AttackOutput(images=adv, model=victim, info=info)

    def __repr__(self) -> str:
        return (
            f"MultimodalAttack({self.image_attack}, eps={self.eps}, steps={self.steps}, "
            f"image_target={self.image_target!r}, text={self.text.config})"
        )
