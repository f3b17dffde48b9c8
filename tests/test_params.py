"""One factory mechanism (`params.checked`): checked signatures, closest-name errors, and every
registered attack and defense key checked at `clipx recipe show`, before anything runs."""

from __future__ import annotations

import inspect
import textwrap

import pytest
from click.testing import CliRunner

from clip_robust_ext.api import ClipxUsageError, checked, entries, keyword_parameters, signature_of
from clip_robust_ext.cli import cli
from clip_robust_ext.params import is_checked


class Blur:
    def __init__(self, model, sigma: float = 1.0, taps: int = 3, cache: object = None):
        self.model, self.sigma, self.taps = model, sigma, taps


def test_checked_factory_has_the_class_signature_and_names_the_closest_parameter():
    factory = checked(Blur, "attack 'blur'", hidden=("cache",))
    assert list(inspect.signature(factory).parameters) == ["model", "sigma", "taps"]
    built = factory("m", sigma=2.0)
    assert isinstance(built, Blur) and built.sigma == 2.0 and built.taps == 3
    with pytest.raises(ClipxUsageError, match=r"attack 'blur': unknown parameter 'sigm' \(did you mean 'sigma'\?\)"):  # fmt: skip
        factory("m", sigm=2.0)
    with pytest.raises(ClipxUsageError, match="unknown parameter 'cache'"):
        factory("m", cache=1)  # hidden from recipes and callers alike


def test_declared_options_replace_a_var_keyword():
    def build(model, **options):
        return options

    factory = checked(build, "model 'x'", extra=keyword_parameters({"lr": 1e-3, "arch": "tiny"}))
    params, open_ended = signature_of(factory)
    assert params == {"model": inspect.Parameter.empty, "lr": float, "arch": str}
    assert not open_ended
    assert factory(None, lr=0.1) == {"lr": 0.1}
    with pytest.raises(ClipxUsageError, match="did you mean 'arch'"):
        factory(None, arc="big")


@pytest.mark.parametrize("kind", ["attacks", "defenses", "models"])
def test_every_registered_factory_is_checked_and_closed(kind):
    """No **kwargs left unchecked: recipes can check every key of these against the signature."""
    for name, entry in entries(kind).items():
        assert is_checked(entry.obj), name
        if kind != "models" or name == "procedural-small":
            assert not signature_of(entry.obj)[1], f"{kind} '{name}' takes **kwargs"


def _recipe(tmp_path, attack: str) -> str:
    path = tmp_path / "typo.toml"
    path.write_text(
        textwrap.dedent(f"""
        [recipe]
        name = "typo"
        [model]
        source = "procedural-small"
        [evaluate]
        protocol = "pgd"
        attacks = [{attack}]
        """)
    )
    return str(path)


@pytest.mark.parametrize(
    ("attack", "closest"),
    [
        ('{ name = "semantic-ensemble", stpes = 3 }', "steps"),
        ('{ name = "text-attack", max_wrods = 2 }', "max_words"),
        ('{ name = "coattack", text_wieght = 2.0 }', "text_weight"),
        ('{ name = "multimodal", transformaton = "charswap" }', "transformation"),
        ('{ name = "autoattack", n_iters = 10 }', "n_iter"),
    ],
)
def test_recipe_show_rejects_a_misspelt_attack_key(tmp_path, attack, closest):
    result = CliRunner().invoke(cli, ["recipe", "show", _recipe(tmp_path, attack)])
    assert result.exit_code == 2, result.output
    assert "evaluate.attacks.0." in result.output and f"did you mean '{closest}'" in result.output


def test_recipe_show_rejects_a_misspelt_defense_key(tmp_path):
    path = tmp_path / "defense.toml"
    path.write_text(
        textwrap.dedent("""
        [recipe]
        name = "typo"
        [model]
        source = "procedural-small"
        [data]
        dataset = "procedural-shapes"
        [defense]
        name = "saft"
        ensemble_wieght = 1.0
        """)
    )
    result = CliRunner().invoke(cli, ["recipe", "show", str(path)])
    assert result.exit_code == 2 and "defense.ensemble_wieght: unknown key" in result.output
