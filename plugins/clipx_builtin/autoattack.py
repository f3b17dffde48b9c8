"""AutoAttack (fra31 settings) as the image attack "autoattack"."""

from clip_robust_ext.api import build_autoattack


def register_all(register) -> None:
    register(
        "autoattack",
        build_autoattack,
        modality="image",
        # the engine fills these from the protocol when the attack spec leaves them out
        protocol_params=("norm", "seed", "backend"),
        description="AutoAttack with fra31 settings (pyautoattack | fra31 | torchattacks backends)",
    )
