"""Image attacks from torchattacks, each under its lowercase class name."""

from clip_robust_ext.api import factory_for, torchattacks_classes


def register_all(register) -> None:
    for name, cls in torchattacks_classes().items():
        register(
            name, factory_for(cls), modality="image", description=f"torchattacks.{cls.__name__}"
        )
