"""Image attacks from torchattacks, each under its lowercase class name; "pgd" adds early exit."""

from clip_robust_ext.api import build_pgd, factory_for, torchattacks_classes


def register_all(register) -> None:
    for name, cls in torchattacks_classes().items():
        if name == "pgd":
            continue
        register(
            name, factory_for(cls), modality="image", description=f"torchattacks.{cls.__name__}"
        )
    register(
        "pgd",
        build_pgd,
        modality="image",
        # the engine passes the protocol's early_exit; called directly (training) it is off
        protocol_params=("early_exit",),
        description="torchattacks.PGD; early_exit = true: each sample stops at its first "
        "misclassified iterate (evaluation)",
    )
