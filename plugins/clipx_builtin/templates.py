"""Template sets: the TeCoA single template, OpenAI's ImageNet ensembles, shapes."""

from clip_robust_ext.api import TEMPLATE_SETS


def register_all(register) -> None:
    for name, templates in TEMPLATE_SETS.items():
        register(name, list(templates), description=f"{len(templates)} template(s)")
