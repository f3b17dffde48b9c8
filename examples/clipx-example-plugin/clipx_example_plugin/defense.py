"""Fast adversarial training (Wong et al. 2020) for CLIP's zero-shot head: cross-entropy of
the zero-shot logits on FGSM-RS examples. The Trainer engine owns the loop; this is the loss."""

import torch.nn.functional as F

from clip_robust_ext.api import Defense, parse_eps, verify_adversarial


class FastAT(Defense):
    name = "example-fast-at"
    trainable = "visual"

    def __init__(self, eps: float = 1 / 255, alpha: float = 1.25 / 255, restarts: int = 1):
        self.eps = parse_eps(eps, name="eps")
        self.alpha = parse_eps(alpha, name="alpha")
        self.restarts = restarts

    def loss(self, batch, ctx):
        attack = ctx.attack(
            "example-fgsm-rs", eps=self.eps, alpha=self.alpha, restarts=self.restarts
        )
        x_adv = attack(batch.images, batch.labels).images
        verify_adversarial(batch.images, x_adv, self.eps, "Linf", "example-fast-at/example-fgsm-rs")
        logits = ctx.model(x_adv)
        accuracy = (logits.argmax(1) == batch.labels).float().mean()
        return F.cross_entropy(logits, batch.labels), {"adv_acc": float(accuracy)}
