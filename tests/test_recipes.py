"""Recipe schema: validation with closest-name hints, eps strings, profiles, --set, TOML output."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import tomllib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clip_robust_ext import ClipxUsageError, hookimpl
from clip_robust_ext.recipes import (
    apply_set,
    deep_merge,
    dump_toml,
    list_recipes,
    parse_set,
    resolve,
    shipped_recipe_dirs,
)


class ToyDefense:
    """A real (if simple) defense: CE on the clean zero-shot logits."""

    name = "toy-ce"
    trainable = "visual"
    needs_reference = False

    def __init__(self, eps: float = 1 / 255, steps: int = 1, mode: str = "ce"):
        self.eps, self.steps, self.mode = eps, steps, mode

    def setup(self, ctx):
        pass

    def loss(self, batch, ctx):
        import torch.nn.functional as F

        return F.cross_entropy(ctx.model(batch.images), batch.labels), {}

    def config(self):
        return dict(vars(self))


class ToyPlugin:
    @hookimpl
    def register_defenses(self, register):
        register("toy-ce", ToyDefense, description="test defense")
        register("toy-kw", lambda **kw: ToyDefense(), description="takes **kwargs")


@pytest.fixture
def toy(register_plugin):
    return register_plugin(ToyPlugin(), "toy-recipes")


BASE = """
[recipe]
name = "toy"
description = "a toy recipe"
seed = 3

[model]
source = "open_clip"
arch = "clipx-tiny"

[data]
dataset = "procedural-shapes"
split = "train"
n = 32
templates = "shapes"

[defense]
name = "toy-ce"
epochs = 1
lr = 1e-4
batch_size = 16
eps = "4/255"
steps = 2

[[baselines]]
name = "toy-ce"
label = "toy-b"
max_steps = 2

[profiles.bigger]
data = { n = 64 }
defense = { lr = 2e-4 }

[profiles.typo]
model = { sourc = "open_clip" }
"""


@pytest.fixture
def recipe_file(tmp_path, toy):
    def write(text: str = BASE, name: str = "toy.toml"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


def _raw(text: str) -> str:
    return text.replace('\n[profiles.typo]\nmodel = { sourc = "open_clip" }\n', "")


def test_resolve_routes_keys_and_parses_budgets(recipe_file):
    r = resolve(recipe_file(_raw(BASE)))
    d = r.doc
    assert r.name == "toy" and r.profile == "default" and r.seed == 3
    assert d["recipe"]["stages"] == ["defend"]
    assert d["model"] == {"source": "open_clip", "arch": "clipx-tiny"}
    assert d["data"] == {
        "dataset": "procedural-shapes",
        "templates": "shapes",
        "split": "train",
        "n": 32,
    }
    # eps and steps are the defense's parameters; the others are TrainConfig fields
    assert d["defense"]["params"] == {"eps": pytest.approx(4 / 255), "steps": 2}
    assert d["defense"]["train"] == {"epochs": 1, "lr": 1e-4, "batch_size": 16, "seed": 3}
    assert d["baselines"][0]["label"] == "toy-b"
    assert d["baselines"][0]["train"] == {"max_steps": 2, "seed": 3}
    assert [m["label"] for m in r.methods] == ["toy-ce", "toy-b"]


def test_train_subtable_reaches_trainconfig_fields_the_defense_shadows(recipe_file):
    text = _raw(BASE).replace("steps = 2\n", "steps = 2\ntrain = { eps = 1e-6 }\n")
    d = resolve(recipe_file(text)).doc["defense"]
    assert d["train"]["eps"] == 1e-6 and d["params"]["eps"] == pytest.approx(4 / 255)


def test_factory_with_kwargs_accepts_any_key(recipe_file):
    text = _raw(BASE).replace('name = "toy-ce"\nepochs', 'name = "toy-kw"\nwhatever = 3\nepochs')
    d = resolve(recipe_file(text)).doc["defense"]
    assert d["params"]["whatever"] == 3 and d["train"]["lr"] == 1e-4


def test_profile_is_deep_merged(recipe_file):
    text = _raw(BASE)
    r = resolve(recipe_file(text), "bigger")
    assert r.profile == "bigger" and r.doc["recipe"]["profile"] == "bigger"
    assert r.doc["data"]["n"] == 64 and r.doc["data"]["split"] == "train"
    assert r.doc["defense"]["train"]["lr"] == 2e-4 and r.doc["defense"]["params"]["steps"] == 2
    assert r.fingerprint() != resolve(recipe_file(text)).fingerprint()
    with pytest.raises(
        ClipxUsageError, match=r"unknown profile 'biger' \(did you mean 'bigger'\?\)"
    ):
        resolve(recipe_file(text), "biger")


def test_misspelt_key_in_a_profile_names_the_profile(recipe_file):
    with pytest.raises(
        ClipxUsageError,
        match=r"profiles\.typo\.model\.sourc: unknown key \(did you mean 'source'\?\)",
    ):
        resolve(recipe_file(BASE))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("[defense]\n", "[defence]\n", r"defence: unknown key \(did you mean 'defense'\?\)"),
        ("seed = 3", "sed = 3", r"recipe\.sed: unknown key \(did you mean 'seed'\?\)"),
        ("arch = ", "arc = ", r"model\.arc: unknown key \(did you mean 'arch'\?\)"),
        ("split = ", "splt = ", r"data\.splt: unknown key \(did you mean 'split'\?\)"),
        ("lr = 1e-4", "lrr = 1e-4", r"defense\.lrr: unknown key \(did you mean 'lr'\?\)"),
        (
            "max_steps = 2",
            "max_step = 2",
            r"baselines\.0\.max_step: unknown key \(did you mean 'max_steps'\?\)",
        ),
        (
            'source = "open_clip"',
            'source = "open-clip"',
            r"model\.source: unknown model 'open-clip' \(did you mean 'open_clip'\?\)",
        ),
        (
            'dataset = "procedural-shapes"',
            'dataset = "procedural-shape"',
            r"data\.dataset: unknown dataset 'procedural-shape' \(did you mean 'procedural-shapes'\?\)",
        ),
        (
            'name = "toy-ce"\nepochs',
            'name = "toy-cee"\nepochs',
            r"defense\.name: unknown defense 'toy-cee' \(did you mean 'toy-ce'\?\)",
        ),
        (
            'templates = "shapes"',
            'templates = "shape"',
            r"data\.templates: unknown template set 'shape' \(did you mean 'shapes'\?\)",
        ),
        ('eps = "4/255"', 'eps = "4/0"', r"defense\.eps: cannot parse '4/0'"),
        ('eps = "4/255"', 'eps = "300/255"', r"defense\.eps: '300/255' is outside \[0, 1"),
        ('eps = "4/255"', 'eps = "four"', r"defense\.eps: cannot parse 'four'"),
        ("epochs = 1", 'epochs = "one"', r"defense\.epochs: expected an integer, got 'one'"),
        ("steps = 2", "steps = 2.5", r"defense\.steps: expected an integer, got 2\.5"),
        ("n = 32", "n = true", r"data\.n: expected an integer, got True"),
        ('label = "toy-b"', 'label = "clip"', r"baselines\.0\.label: 'clip' must be a simple name"),
        ('label = "toy-b"', 'label = "toy-ce"', r"label 'toy-ce' is used twice"),
        (
            "seed = 3",
            "seed = 3\nstages = ['defend', 'evaluat']",
            r"recipe\.stages\.1: unknown stage 'evaluat' \(did you mean 'evaluate'\?\)",
        ),
        (
            "seed = 3",
            "seed = 3\nstages = ['evaluate']",
            r"stage 'evaluate' needs a \[evaluate\] section",
        ),
        ("[model]\n", "[model]\ncheckpoint = 3\n", r"model\.checkpoint: expected a string"),
    ],
)
def test_bad_recipes_fail_with_the_key_and_the_closest_name(recipe_file, old, new, message):
    text = _raw(BASE)
    assert old in text
    with pytest.raises(ClipxUsageError, match=message) as info:
        resolve(recipe_file(text.replace(old, new, 1)))
    assert "\n" not in str(info.value)


def test_missing_sections_and_malformed_toml(recipe_file):
    with pytest.raises(ClipxUsageError, match=r"model: missing section \[model\]"):
        resolve(recipe_file('[recipe]\nname = "x"\n'))
    with pytest.raises(ClipxUsageError, match=r"data: missing section \[data\]"):
        resolve(recipe_file('[model]\nsource = "open_clip"\n[defense]\nname = "toy-ce"\n'))
    with pytest.raises(ClipxUsageError, match=r"invalid TOML: .*line 2"):
        resolve(recipe_file("[model]\nsource = = 1\n"))
    with pytest.raises(ClipxUsageError, match="recipe file not found"):
        resolve("/nonexistent/recipe.toml")
    with pytest.raises(ClipxUsageError, match=r"unknown recipe 'no-such-recipe'"):
        resolve("no-such-recipe")


def test_set_overrides_scalars_arrays_and_array_entries(recipe_file):
    path = recipe_file(_raw(BASE))
    r = resolve(
        path,
        overrides=[
            "defense.lr=1e-5",
            "defense.eps=1/255",
            "baselines.0.epochs=2",
            "data.templates=['a {}', 'the {}']",
            "baselines.1.name=toy-ce",
            "baselines.1.label=third",
        ],
    )
    d = r.doc
    assert d["defense"]["train"]["lr"] == 1e-5
    assert d["defense"]["params"]["eps"] == pytest.approx(1 / 255)
    assert d["baselines"][0]["train"]["epochs"] == 2
    assert d["data"]["templates"] == ["a {}", "the {}"]
    assert [b["label"] for b in d["baselines"]] == ["toy-b", "third"]
    assert r.overrides[0] == "defense.lr=1e-5"
    with pytest.raises(ClipxUsageError, match=r"defense\.lrr: unknown key \(did you mean 'lr'\?\)"):
        resolve(path, overrides=["defense.lrr=1"])
    with pytest.raises(ClipxUsageError, match="expected KEY=VALUE"):
        resolve(path, overrides=["defense.lr"])
    with pytest.raises(ClipxUsageError, match="index 5 out of range"):
        resolve(path, overrides=["baselines.5.lr=1"])
    with pytest.raises(ClipxUsageError, match="'defense.lr' is a value, not a table"):
        resolve(path, overrides=["defense.lr.x=1"])


def test_parse_set_and_apply_set():
    assert parse_set("a.b=1e-5") == (["a", "b"], 1e-5)
    assert parse_set("a=[1, 2]") == (["a"], [1, 2])
    assert parse_set("a=4/255") == (["a"], "4/255")  # not TOML: kept as a string
    assert parse_set("a=hello world") == (["a"], "hello world")
    doc = {"x": [{"y": 1}]}
    apply_set(doc, ["x", "0", "y"], 2)
    apply_set(doc, ["z", "w"], True)
    assert doc == {"x": [{"y": 2}], "z": {"w": True}}
    with pytest.raises(ClipxUsageError, match="must be an array index"):
        apply_set(doc, ["x", "first", "y"], 1)


def test_deep_merge_does_not_touch_its_inputs():
    base = {"a": {"b": 1, "c": [1]}, "d": 1}
    over = {"a": {"c": [2]}, "e": {"f": 1}}
    assert deep_merge(base, over) == {"a": {"b": 1, "c": [2]}, "d": 1, "e": {"f": 1}}
    assert base == {"a": {"b": 1, "c": [1]}, "d": 1}


def test_resolved_recipe_is_itself_a_valid_recipe(recipe_file, tmp_path):
    r = resolve(recipe_file(_raw(BASE)), "bigger", ["defense.lr=1e-5"])
    again_path = tmp_path / "again.toml"
    again_path.write_text(r.to_toml())
    assert tomllib.loads(r.to_toml()) == r.doc
    again = resolve(again_path)
    assert again.doc["defense"] == r.doc["defense"] and again.doc["data"] == r.doc["data"]
    assert json.loads(r.to_json()) == r.doc


_keys = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=8
)
_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=10),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=3)),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        _keys,
        st.one_of(
            _values, st.lists(st.dictionaries(_keys, _values, max_size=3), min_size=1, max_size=2)
        ),
        max_size=4,
    )
)
def test_dump_toml_round_trips(doc):
    assert tomllib.loads(dump_toml(doc)) == doc


def test_shipped_recipes_are_registered():
    shipped = {p.stem for d in shipped_recipe_dirs() for p in d.glob("*.toml")}
    listed = {r["name"]: r for r in list_recipes()}
    assert shipped <= set(listed)
    for name in shipped:
        assert listed[name]["plugin"] == "builtin" and listed[name]["profiles"][0] == "default"


def test_profile_unset_and_component_change(recipe_file):
    text = _raw(BASE) + textwrap.dedent("""
        [profiles.full]
        unset = ["defense.epochs", "baselines.0.max_steps", "data.n"]
        defense = { max_steps = 5 }

        [profiles.other-data]
        data = { dataset = "cifar10-jpegs", split = "test" }
    """)
    path = recipe_file(text)
    full = resolve(path, "full").doc
    assert "n" not in full["data"] and full["data"]["split"] == "train"
    assert full["defense"]["train"] == {"lr": 1e-4, "batch_size": 16, "max_steps": 5, "seed": 3}
    assert full["baselines"][0]["train"] == {"seed": 3}
    # a different dataset: the base's data parameters (n, templates) belong to the other one
    other = resolve(path, "other-data").doc
    assert other["data"] == {"dataset": "cifar10-jpegs", "split": "test"}
    bad = text.replace('"data.n"]', '"data.nn"]')
    with pytest.raises(
        ClipxUsageError,
        match=r"profiles\.full\.unset\.2: 'data\.nn' is not in the base recipe \(did you mean 'data\.n'\?\)",
    ):
        resolve(recipe_file(bad))


SHIPPED = sorted(p for p in (Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))


@pytest.mark.parametrize(
    ("path", "profile"),
    [
        (p, prof)
        for p in SHIPPED
        for prof in ["default", *tomllib.loads(p.read_text()).get("profiles", {})]
    ],
    ids=lambda v: v.stem if isinstance(v, Path) else v,
)
def test_every_shipped_recipe_resolves_in_every_profile(path, profile):
    r = resolve(path, profile)
    assert r.name == path.stem and r.stages
    for method in r.methods:
        # the attack budget reaches the defense, never the optimiser's epsilon
        assert "eps" not in method["train"] or "eps" not in method["params"]


_junk = st.one_of(
    st.text(max_size=6),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@st.composite
def _mutated_recipes(draw):
    doc = tomllib.loads(_raw(BASE))
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(sorted(doc)))
        table = doc[section]
        if isinstance(table, list):
            table = table[0]
        if not isinstance(table, dict) or not table:
            doc[section] = draw(_junk)
            continue
        key = draw(st.sampled_from(sorted(table)))
        action = draw(st.sampled_from(["drop", "retype", "rename"]))
        if action == "drop":
            del table[key]
        elif action == "retype":
            table[key] = draw(_junk)
        else:
            table[key[:-1] + draw(st.text(alphabet="xyz_", min_size=1, max_size=2))] = table.pop(
                key
            )
    return doc


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(doc=_mutated_recipes())
def test_malformed_recipes_fail_cleanly(tmp_path_factory, toy, doc):
    path = tmp_path_factory.mktemp("bad") / "bad.toml"
    path.write_text(dump_toml(doc))
    try:
        resolve(path)
    except ClipxUsageError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("bad.toml: ")
