"""clipx plugin: one attack, one defense and one recipe, registered through the hooks.

Keep this module light: torch-heavy imports happen inside the hooks, so `clipx --help` stays
quick for everyone who installs the plugin."""

from pathlib import Path

from clip_robust_ext import hookimpl

__version__ = "0.2.0"


@hookimpl
def register_attacks(register):
    from clip_robust_ext.api import factory_for

    from .attack import RestartFGSM

    # factory_for validates parameters, parses "4/255" budgets and runs the attack in eval
    # mode, fp32, with frozen weights - the same adapter every torchattacks attack goes through
    register(
        "example-fgsm-rs",
        factory_for(RestartFGSM),
        modality="image",
        description="FGSM from a uniform random start, best of N restarts (example plugin)",
    )


@hookimpl
def register_defenses(register):
    from .defense import FastAT

    register(
        "example-fast-at", FastAT, description="CE on example-fgsm-rs examples (example plugin)"
    )


@hookimpl
def register_recipes(register):
    path = Path(__file__).parent / "recipes" / "example-fast-at.toml"
    register("example-fast-at", path, description="fast AT with the example plugin's attack")
