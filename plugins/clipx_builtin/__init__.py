"""Built-in plugin: models, datasets, template sets, image attacks and evaluation protocols.

Registered through the `clipx` entry point of the main distribution, exactly like a third-party
plugin, so the hook API is proven by use."""

from clip_robust_ext import hookimpl

# submodules import torch/open_clip: load them inside the hooks so `clipx --help` stays quick


@hookimpl
def register_models(register):
    from . import models

    models.register_all(register)


@hookimpl
def register_datasets(register):
    from . import datasets

    datasets.register_all(register)


@hookimpl
def register_templates(register):
    from . import templates

    templates.register_all(register)


@hookimpl
def register_attacks(register):
    from . import attacks, autoattack

    attacks.register_all(register)
    autoattack.register_all(register)


@hookimpl
def register_evaluators(register):
    from . import protocol_presets

    protocol_presets.register_all(register)


@hookimpl
def register_recipes(register):
    from clip_robust_ext.api import register_shipped

    register_shipped(register)
