"""Package discovery for the three source roots (see pyproject.toml): the core, the built-in
plugins under plugins/, and recipes/ installed under the package name `clipx_recipes`."""

from setuptools import find_packages, setup

plugins = find_packages("plugins", include=["clipx_*"])
setup(
    packages=find_packages(".", include=["clip_robust_ext*"]) + plugins + ["clipx_recipes"],
    package_dir={
        "clipx_recipes": "recipes",
        **{p: "plugins/" + p.replace(".", "/") for p in plugins},
    },
)
