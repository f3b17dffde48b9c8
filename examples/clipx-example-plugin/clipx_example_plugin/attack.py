"""FGSM-RS (Wong et al. 2020) as a torchattacks Attack, best of `restarts`: per sample the first
restart that changes the prediction is kept (else the last). Linf."""

import torch
import torch.nn.functional as F
from torchattacks.attack import Attack


class RestartFGSM(Attack):
    def __init__(self, model, eps: float = 8 / 255, alpha: float = 10 / 255, restarts: int = 1):
        super().__init__("RestartFGSM", model)
        if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 1:
            raise ValueError(f"restarts must be a positive integer, got {restarts!r}")
        self.eps, self.alpha, self.restarts, self.supported_mode = eps, alpha, restarts, ["default"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images, labels = images.clone().detach().to(self.device), labels.clone().to(self.device)
        best, open_ = images.clone(), torch.ones(len(images), dtype=torch.bool, device=self.device)
        for _ in range(self.restarts):  # open_: samples not fooled yet
            noise = torch.empty_like(images).uniform_(-self.eps, self.eps)
            x = (images + noise).clamp(0, 1).requires_grad_(True)
            grad = torch.autograd.grad(F.cross_entropy(self.get_logits(x), labels), x)[0]
            delta = torch.clamp(x.detach() + self.alpha * grad.sign() - images, -self.eps, self.eps)
            x_adv = torch.clamp(images + delta, 0, 1)  # frozen weights: no graph is kept
            fooled = self.get_logits(x_adv).argmax(1) != labels
            best[open_] = x_adv[open_]
            open_ &= ~fooled
            if not open_.any():
                break
        return best
