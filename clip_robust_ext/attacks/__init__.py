"""Attack contracts, integrity checks and adapters to torchattacks / AutoAttack / TextAttack."""

from .base import AttackOutput, attack_mode, build_attack
from .checks import verify_adversarial

__all__ = ["AttackOutput", "attack_mode", "build_attack", "verify_adversarial"]
