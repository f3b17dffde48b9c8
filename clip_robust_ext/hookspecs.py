"""The plugin contract. Every registry hook receives a `register(name, obj, description="",
*, modality=None, protocol_params=())` callback (the simonw/llm pattern): a plugin calls it zero
or more times and returns nothing. Specs are keyword-only; an implementation may accept a subset
of the arguments, so arguments can be added later without breaking plugins (never renamed or
removed). Registered factories are wrapped by `params.checked`: recipes validate and route keys
by their signature. Author guide: docs/PLUGINS.md; everything a plugin imports:
`clip_robust_ext.api`."""

from __future__ import annotations

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("clipx")
hookimpl = HookimplMarker("clipx")


@hookspec
def register_models(register):
    """register(name, factory, description=...) - factory(**params) -> LoadedCLIP."""


@hookspec
def register_datasets(register):
    """register(name, factory, description=...) - factory(root=None, split='test', **params)
    -> a torch Dataset of (image01, label) with a `classnames` attribute."""


@hookspec
def register_templates(register):
    """register(name, templates_or_descriptions, description=...) - a list of '{}' templates,
    or a dict class -> list of descriptions (SAFT-style description sets)."""


@hookspec
def register_attacks(register):
    """register(name, factory, modality='image'|'text'|'multimodal'|'retrieval', description=...) -
    factory(model: ZeroShotClassifier, **params) -> the attack object. A 'retrieval' attack is
    called as attack(images, texts, text_owner) -> RetrievalAttackOutput by retrieval protocols
    (e.g. `coattack-retrieval` modes), never by classification ones."""


@hookspec
def register_defenses(register):
    """register(name, factory, description=...) - factory(**params) -> a Defense."""


@hookspec
def register_testtime_defenses(register):
    """register(name, factory, description=...) - factory(**params) -> a TestTimeDefense
    (acts on each input at inference: logits(classifier, images))."""


@hookspec
def register_evaluators(register):
    """register(name, protocol_factory, description=...) - named evaluation protocols."""


@hookspec
def register_recipes(register):
    """register(name, path_to_toml, description=...)."""


@hookspec
def register_commands(cli):
    """Add click commands or groups to the `clipx` CLI group (built-in commands stay)."""
