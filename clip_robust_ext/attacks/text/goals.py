"""TextAttack goal functions for CLIP text embeddings (imports TextAttack; load lazily)."""

from __future__ import annotations

import torch

from .env import import_textattack

_ta = import_textattack()
from textattack.goal_function_results import GoalFunctionResult  # noqa: E402
from textattack.goal_functions import GoalFunction, UntargetedClassification  # noqa: E402


class EmbeddingKLResult(GoalFunctionResult):
    """Result of CLIPEmbeddingKL; `score` is the KL divergence."""

    def __init__(self, *args):
        super().__init__(*args, goal_function_result_type="CLIPEmbeddingKL")

    def get_text_color_input(self) -> str:
        return "red"

    def get_text_color_perturbed(self) -> str:
        return "blue"

    def get_colored_output(self, color_method=None) -> str:
        return f"KL={self.score:.3g}"


class CLIPEmbeddingKL(GoalFunction):
    """Label-free goal of Co-Attack/MMCoA's BERT-Attack on CLIP:
    score = KL(softmax(e(T)) || softmax(e(T'))), softmax over the embedding dimensions of the
    L2-normalised CLIP text embeddings e. Maximised (the search keeps the best swap) unless
    `threshold` is given, in which case the goal is met once KL > threshold.

    The model wrapper must return (N, D) embeddings (CLIPTextModelWrapper without anchors)."""

    def __init__(self, model_wrapper, threshold: float | None = None, **kwargs):
        kwargs.setdefault("maximizable", threshold is None)
        super().__init__(model_wrapper, **kwargs)
        self.threshold = threshold
        self._clean_logp: torch.Tensor | None = None

    def init_attack_example(self, attacked_text, ground_truth_output):
        clean = self._call_model([attacked_text])[0]
        self._clean_logp = torch.log_softmax(clean.double(), dim=-1)
        return super().init_attack_example(attacked_text, ground_truth_output)

    def _process_model_outputs(self, inputs, outputs):
        outputs = torch.as_tensor(outputs) if not isinstance(outputs, torch.Tensor) else outputs
        if outputs.ndim != 2 or outputs.shape[0] != len(inputs):
            raise ValueError(f"expected ({len(inputs)}, D) embeddings, got {tuple(outputs.shape)}")
        return outputs.float().cpu()

    def _get_score(self, model_output, _):
        logq = torch.log_softmax(torch.as_tensor(model_output).double(), dim=-1)
        p = self._clean_logp.exp()
        return float((p * (self._clean_logp - logq)).sum())

    def _is_goal_complete(self, model_output, attacked_text):
        return (
            self.threshold is not None
            and self._get_score(model_output, attacked_text) > self.threshold
        )

    def _should_skip(self, model_output, attacked_text):
        return False

    def _goal_function_result_type(self):
        return EmbeddingKLResult

    def _get_displayed_output(self, raw_output):
        return "embedding"

    def extra_repr_keys(self):
        return ["threshold", *super().extra_repr_keys()]


class ImageGuidedResult(EmbeddingKLResult):
    """Result of CLIPImageGuided; `score` is minus the cosine to the text's own image."""

    def get_colored_output(self, color_method=None) -> str:
        return f"-cos={self.score:.3g}"


class CLIPImageGuided(GoalFunction):
    """SGA's image-guided text goal (Lu et al., ICCV 2023): score = -cos(e(T'), anchors[label]),
    the text moved away from its own (clean or adversarial) image embedding. Maximised: the greedy
    search keeps a swap only when it lowers the similarity, as the authors' candidate argmax (which
    includes the unchanged word) does.

    The model wrapper must have anchors; it returns logit_scale * cos (N, K), so the scale is
    divided out here (the score is a plain cosine whatever the model's temperature)."""

    def __init__(self, model_wrapper, **kwargs):
        kwargs.setdefault("maximizable", True)
        super().__init__(model_wrapper, **kwargs)
        with torch.no_grad():
            self._scale = float(model_wrapper.classifier.logit_scale())

    def _process_model_outputs(self, inputs, outputs):
        outputs = torch.as_tensor(outputs) if not isinstance(outputs, torch.Tensor) else outputs
        if outputs.ndim != 2 or outputs.shape[0] != len(inputs):
            raise ValueError(f"expected ({len(inputs)}, K) scores, got {tuple(outputs.shape)}")
        return outputs.float().cpu()

    def _get_score(self, model_output, _):
        return -float(model_output[self.ground_truth_output]) / self._scale

    def _is_goal_complete(self, model_output, attacked_text):
        return False

    def _should_skip(self, model_output, attacked_text):
        return False

    def _goal_function_result_type(self):
        return ImageGuidedResult

    def _get_displayed_output(self, raw_output):
        return "similarity"


__all__ = [
    "CLIPEmbeddingKL",
    "CLIPImageGuided",
    "EmbeddingKLResult",
    "ImageGuidedResult",
    "UntargetedClassification",
]
