"""FGSM-RS with restarts, written as a torchattacks Attack (the torchattacks contribution style:
defaults for every argument but the model, `forward(images, labels)` -> adversarial images)."""

import torch
import torch.nn.functional as F
from torchattacks.attack import Attack


class RestartFGSM(Attack):
    """One signed-gradient step of size alpha from a uniform random start in the eps ball
    (Wong et al. 2020), repeated `restarts` times; per sample the first restart that changes the
    prediction is kept (else the last). Distance measure: Linf."""

    def __init__(self, model, eps: float = 8 / 255, alpha: float = 10 / 255, restarts: int = 1):
        super().__init__("RestartFGSM", model)
        if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 1:
            raise ValueError(f"restarts must be a positive integer, got {restarts!r}")
        self.eps, self.alpha, self.restarts = eps, alpha, restarts
        self.supported_mode = ["default"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        best = images.clone()
        open_ = torch.ones(len(images), dtype=torch.bool, device=images.device)  # not yet fooled
        for _ in range(self.restarts):
            delta = torch.empty_like(images).uniform_(-self.eps, self.eps)
            x = torch.clamp(images + delta, 0, 1).requires_grad_(True)
            loss = F.cross_entropy(self.get_logits(x), labels)
            grad = torch.autograd.grad(loss, x)[0]
            delta = torch.clamp(x.detach() + self.alpha * grad.sign() - images, -self.eps, self.eps)
            x_adv = torch.clamp(images + delta, 0, 1).detach()
            with torch.no_grad():
                fooled = self.get_logits(x_adv).argmax(1) != labels
            best[open_] = x_adv[open_]
            open_ &= ~fooled
            if not open_.any():
                break
        return best
