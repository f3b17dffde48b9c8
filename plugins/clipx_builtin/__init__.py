"""Built-in plugin: models, datasets, template sets, image attacks and evaluation protocols.

Registered through the `clipx` entry point of the main distribution, exactly like a third-party
plugin, so the hook API is proven by use."""

from clip_robust_ext import hookimpl

from . import attacks, datasets, models, templates


@hookimpl
def register_models(register):
    models.register_all(register)


@hookimpl
def register_datasets(register):
    datasets.register_all(register)


@hookimpl
def register_templates(register):
    templates.register_all(register)


@hookimpl
def register_attacks(register):
    attacks.register_all(register)
