"""Bad input through the real CLI: exit code 2, one 'Error: ...' line naming what is wrong and
what would be right, never a traceback. One table of cases, then a property-based test that
mutates the shipped recipes (hypothesis) and checks every mutant fails the same clean way at
validation time (`clipx recipe show`, nothing is trained)."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomllib
import torch
from click.testing import CliRunner
from helpers import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import Dataset

from clip_robust_ext import hookimpl
from clip_robust_ext.cli import cli
from clip_robust_ext.recipes import dump_toml

# ------------------------------------------------------------------------------ test inputs


class _BadImages(Dataset):
    """A registered dataset whose images break the dataset contract in one way each."""

    classnames = ["circle", "square"]

    def __init__(self, kind: str, split: str = "test", root=None, n: int = 4):
        self.kind, self.n = kind, (0 if kind == "empty" else n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        image = torch.rand(3, 32, 32, generator=g)
        if self.kind == "grey":
            image = image[:1]
        elif self.kind == "uint8":
            image = (image * 255).to(torch.uint8)
        elif self.kind == "255":
            image = image * 255
        return image, i % 2


class _BadDatasets:
    @hookimpl
    def register_datasets(self, register):
        for kind in ("grey", "uint8", "255", "empty"):
            register(
                f"bad-{kind}",
                lambda split="test", root=None, _k=kind: _BadImages(_k, split, root),
                description=f"test dataset: {kind} images",
            )


@pytest.fixture(autouse=True)
def bad_datasets(register_plugin):
    register_plugin(_BadDatasets(), "bad-input-datasets")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/clipx-pickle-ran",))


def _png(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


TOY_RUN = """
[recipe]
name = "toyrun"
[model]
source = "open_clip"
arch = "clipx-tiny"
[data]
{data}
[defense]
name = "tecoa"
max_steps = 2
batch_size = 4
[evaluate]
protocol = "clean"
templates = "shapes"
datasets = [{evaluate}]
"""


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    """Every file the cases point at (created once)."""
    root = tmp_path_factory.mktemp("bad-input")
    Path("/tmp/clipx-pickle-ran").unlink(missing_ok=True)  # what evil.pt would create
    (root / "malformed.toml").write_text('[model\nsource = "open_clip"\n')
    (root / "binary.toml").write_bytes(b"\xff\xfe\x00\x81 not text")
    (root / "typo.toml").write_text(
        '[recipe]\nname = "typo"\n[model]\nsource = "open_clip"\narch = "clipx-tiny"\n'
        '[evaluate]\nprotocol = "clean"\ndatasets = ["procedural-shapes"]\n[evaluat]\nn = 1\n'
    )
    (root / "bad-stage.toml").write_text(
        '[recipe]\nname = "stage"\nstages = ["evaluat"]\n[model]\nsource = "open_clip"\n'
        '[evaluate]\nprotocol = "clean"\ndatasets = ["procedural-shapes"]\n'
    )
    for cls, colour in (("a_cls", (255, 0, 0)), ("b_cls", (0, 0, 255))):
        for j in range(2):
            _png(root / "folder" / cls / f"{j}.png", colour)
        (root / "no-images" / cls).mkdir(parents=True)
    (root / "three-classes.txt").write_text("red thing\nblue thing\ngreen thing\n")
    from clip_robust_ext.models import load_clip

    torch.manual_seed(0)
    torch.save(load_clip("clipx-small").model.state_dict(), root / "clipx-small.pt")
    with open(root / "evil.pt", "wb") as fh:
        pickle.dump({"state_dict": _Exploit()}, fh)
    (root / "garbage.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    missing = '{ dataset = "image-folder", root = "%s", image_size = 32 }' % (root / "no-such-dir")
    shapes = '{ dataset = "procedural-shapes", n = 8 }'
    (root / "train-data-missing.toml").write_text(
        TOY_RUN.format(
            data=f'dataset = "image-folder"\nroot = "{root / "no-such-dir"}"\nimage_size = 32',
            evaluate=shapes,
        )
    )
    (root / "eval-data-missing.toml").write_text(
        TOY_RUN.format(
            data='dataset = "procedural-shapes"\nn = 8\ntemplates = "shapes"', evaluate=missing
        )
    )
    (root / "train-data-uint8.toml").write_text(
        TOY_RUN.format(data='dataset = "bad-uint8"', evaluate=shapes)
    )
    _round2_files(root)
    _round3_files(root)
    return root


def _round2_files(root: Path) -> None:
    """Files for the issue-23 cases: odd recipe paths, broken images, broken weights, broken
    run-state files."""
    (root / "deep.toml").write_text("a = " + "[" * 600 + "]" * 600 + "\n")
    (root / "folder.toml").mkdir()
    os.mkfifo(root / "fifo.toml")
    os.symlink(root / "loop.toml", root / "loop.toml")
    os.symlink(root / "gone.toml", root / "dangling.toml")
    for name, blob in (("corrupt", b"not an image at all"), ("truncated", None)):
        _png(root / name / "a_cls" / "0.png", (255, 0, 0))
        bad = root / name / "b_cls" / "0.png"
        _png(bad, (0, 0, 255))
        bad.write_bytes(blob if blob is not None else bad.read_bytes()[:50])
    from clip_robust_ext.models import load_clip

    torch.manual_seed(0)
    state = load_clip("clipx-tiny").model.state_dict()
    for name, change in (
        ("nan", lambda t: t.fill_(float("nan"))),
        ("inf", lambda t: t.fill_(float("inf"))),
        ("int8", lambda t: t.to(torch.int8)),
    ):
        broken = dict(state, **{"visual.proj": change(state["visual.proj"].clone())})
        torch.save(broken, root / f"tiny-{name}.pt")
    for name, text in (
        ("malformed", '{"pid": 12'),
        ("list", "[1, 2, 3]"),
        (
            "huge-time",
            json.dumps({"pid": 2**22 + 7, "host": os.uname().nodename, "started": 1e300}),
        ),
    ):
        (root / "locks" / name).mkdir(parents=True)
        (root / "locks" / name / "run.lock").write_text(text)
    evalonly = TOY_RUN.format(
        data='dataset = "procedural-shapes"\nn = 8\ntemplates = "shapes"',
        evaluate='{ dataset = "procedural-shapes", n = 8 }',
    ).replace('name = "toyrun"', 'name = "toyrun"\nstages = ["evaluate"]')
    (root / "eval-only.toml").write_text(evalonly)
    (root / "captions-cut.json").write_text('{"images": [1, 2')
    (root / "captions-other.json").write_text('[{"img": "x.png"}]')
    (root / "stale" / "tecoa").mkdir(parents=True)
    (root / "stale" / "tecoa" / "done.json").write_text('{"key": {"params"')  # truncated
    (root / "stale" / "tecoa" / "final.pt").write_bytes(b"")


def _round3_files(root: Path) -> None:
    """Files for the issue-34 cases: absurd lock files."""
    for name, text in (
        ("pid-1e30", json.dumps({"pid": 1e30, "host": os.uname().nodename, "started": 1.0})),
        ("pid-inf", '{"pid": Infinity, "host": 3, "started": "noon"}'),
    ):
        (root / "locks" / name).mkdir(parents=True)
        (root / "locks" / name / "run.lock").write_text(text)


# --------------------------------------------------------------------------------- the table


EVAL = ["eval", "--model", "open_clip", "--arch", "clipx-tiny", "--run-dir", "{d}/runs/{id}"]


@dataclass
class Case:
    id: str
    argv: list[str]
    expect: tuple[str, ...]  # substrings of the one error line
    env: dict[str, str] = field(default_factory=dict)
    absent: tuple[str, ...] = ()  # paths (under {d}) that must not exist afterwards


def _ds(spec: str) -> list[str]:
    return ["--protocol", "clean", "--set", f"datasets=[{spec}]", "--set", "templates='a {{}}'"]


CASES = [
    # -- recipe files and --set
    Case("malformed-toml", ["recipe", "show", "{d}/malformed.toml"],
         ("malformed.toml: invalid TOML", "line 1")),
    Case("not-utf8", ["recipe", "show", "{d}/binary.toml"], ("binary.toml: not a UTF-8 text file",)),
    Case("recipe-file-missing", ["recipe", "show", "{d}/nope.toml"],
         ("recipe file not found: ", "nope.toml")),
    Case("unknown-recipe", ["recipe", "show", "tecao"],
         ("unknown recipe 'tecao' (did you mean 'tecoa'?)", "available:")),
    Case("unknown-profile", ["recipe", "show", "tecoa", "--profile", "cifar1O"],
         ("unknown profile 'cifar1O' (did you mean 'cifar10'?)", "available: cifar10, default, paper")),
    Case("unknown-section", ["recipe", "show", "{d}/typo.toml"],
         ("evaluat: unknown key (did you mean 'evaluate'?)", "valid keys here:")),
    Case("unknown-key", ["recipe", "show", "tecoa", "--set", "defense.lrr=1e-3"],
         ("defense.lrr: unknown key (did you mean 'lr'?)",)),
    Case("unknown-stage", ["recipe", "show", "{d}/bad-stage.toml"],
         ("recipe.stages.0: unknown stage 'evaluat' (did you mean 'evaluate'?)",)),
    Case("set-syntax", ["recipe", "show", "tecoa", "--set", "defense.lr"],
         ("--set 'defense.lr': expected KEY=VALUE, e.g. defense.lr=1e-5",)),
    Case("wrong-type-int", ["recipe", "show", "tecoa", "--set", 'defense.steps="two"'],
         ("defense.steps: expected an integer, got 'two'",)),
    Case("wrong-type-bool", ["recipe", "show", "tecoa", "--set", "data.n=true"],
         ("data.n: expected an integer, got True",)),
    Case("wrong-type-float", ["recipe", "show", "tecoa", "--set", "defense.lr=[1]"],
         ("defense.lr: expected a number, got [1]",)),
    Case("wrong-type-name", ["recipe", "show", "tecoa", "--set", "defense.name=3"],
         ("defense.name: expected a defense name (string), got 3",)),
    Case("eps-too-big", ["recipe", "show", "tecoa", "--set", "defense.eps=2"],
         ("defense.eps: 2 is outside [0, 1.0]", "pixel space is [0, 1]")),
    Case("eps-fraction-too-big", ["recipe", "show", "tecoa", "--set", 'evaluate.eps=["300/255"]'],
         ("evaluate.eps.0: '300/255' is outside [0, 1.0]",)),
    Case("eps-negative", ["recipe", "show", "tecoa", "--set", 'defense.alpha="-1/255"'],
         ("defense.alpha: '-1/255' is outside [0, 1.0]",)),
    Case("eps-divide-by-zero", ["recipe", "show", "tecoa", "--set", 'defense.eps="4/0"'],
         ("defense.eps: cannot parse '4/0'; write a number or a fraction like '4/255'",)),
    Case("eps-word", ["recipe", "show", "tecoa", "--set", 'defense.eps="four"'],
         ("defense.eps: cannot parse 'four'",)),
    Case("eps-nan", ["recipe", "show", "tecoa", "--set", "defense.eps=nan"],
         ("defense.eps: expected a finite number, got nan",)),
    Case("eps-cli", [*EVAL, "--protocol", "pgd", "--eps", "1/255/2"],
         ("cannot parse '1/255/2'",)),
    Case("alpha-expression", ["recipe", "show", "tecoa", "--set", 'evaluate.alpha="eps/0"'],
         ("evaluate.alpha: cannot evaluate 'eps/0'", "e.g. 'eps/4'")),
    # -- unknown names, with the closest one
    Case("unknown-attack", ["recipe", "show", "tecoa", "--set", 'evaluate.attacks=["pgdd"]'],
         ("evaluate.attacks.0: unknown attack 'pgdd' (did you mean 'pgd'?)",)),
    Case("unknown-attack-cli", [*EVAL, "--protocol", "pgd", "--attack", "fgsn"],
         ("unknown attack 'fgsn' (did you mean 'fgsm'?)",)),
    Case("unknown-defense", ["recipe", "show", "tecoa", "--set", 'defense.name="tecao"'],
         ("defense.name: unknown defense 'tecao' (did you mean 'tecoa'?)", "available:")),
    Case("unknown-dataset", ["recipe", "show", "tecoa", "--set", 'data.dataset="procedural-shape"'],
         ("data.dataset: unknown dataset 'procedural-shape' (did you mean 'procedural-shapes'?)",)),
    Case("unknown-dataset-cli", [*EVAL, "--protocol", "clean", "--dataset", "cifar10-jpeg"],
         ("unknown dataset 'cifar10-jpeg' (did you mean 'cifar10-jpegs'?)",)),
    Case("unknown-model", ["recipe", "show", "tecoa", "--set", 'model.source="procedural-smal"'],
         ("model.source: unknown model 'procedural-smal' (did you mean 'procedural-small'?)",)),
    Case("unknown-model-cli", ["eval", "--model", "clipx-smal-c10", "--protocol", "clean"],
         ("unknown model", "'clipx-smal-c10' (did you mean 'clipx-small-c10'?)")),
    Case("unknown-protocol", ["eval", "--model", "clipx-tiny", "--protocol", "pgdd"],
         ("unknown evaluation protocol 'pgdd' (did you mean 'pgd'?)",)),
    Case("unknown-template-set", ["recipe", "show", "tecoa", "--set", 'data.templates="tecao"'],
         ("data.templates: unknown template set 'tecao' (did you mean 'tecoa'?)",)),
    # -- click's own usage errors, one line too
    Case("bad-option-value", [*EVAL, "--protocol", "clean", "--n", "0"],
         ("Invalid value for '--n-samples' / '--n': 0 is not in the range x>=1", "(see 'clipx eval --help')")),
    Case("unknown-command", ["evaluate"], ("No such command 'evaluate'", "(see 'clipx --help')")),
    # -- data on disk
    Case("dataset-dir-missing", [*EVAL, *_ds('{{dataset="image-folder", root="{d}/no-such-dir"}}')],
         ("dataset directory not found: ", "no-such-dir")),
    Case("assets-dir-missing", [*EVAL, "--protocol", "clean", "--dataset", "cifar10-jpegs"],
         ("CLIPX_ASSETS=/no/such/assets is not a directory",),
         env={"CLIPX_ASSETS": "/no/such/assets"}),
    Case("train-data-missing-before-training",
         ["recipe", "run", "{d}/train-data-missing.toml", "--run-dir", "{d}/runs/{id}"],
         ("dataset directory not found: ", "no-such-dir"), absent=("runs/{id}/tecoa",)),
    Case("eval-data-missing-before-training",
         ["recipe", "run", "{d}/eval-data-missing.toml", "--run-dir", "{d}/runs/{id}"],
         ("dataset directory not found: ", "no-such-dir"), absent=("runs/{id}/tecoa",)),
    Case("classnames-file-mismatch",
         [*EVAL, *_ds('{{dataset="image-folder", root="{d}/folder", classnames="{d}/three-classes.txt"}}')],
         ("three-classes.txt has 3 class names but the dataset has 2 class folders (a_cls, b_cls)",
          "one name per folder, in sorted folder order")),
    Case("classnames-file-missing",
         [*EVAL, *_ds('{{dataset="image-folder", root="{d}/folder", classnames="{d}/nope.txt"}}')],
         ("classnames: class-name file not found: ", "nope.txt")),
    Case("image-grey", [*EVAL, *_ds('"bad-grey"')],
         ("dataset 'bad-grey_test': returned an image of shape (1, 32, 32)", "expected (3, H, W)")),
    Case("image-uint8", [*EVAL, *_ds('"bad-uint8"')],
         ("dataset 'bad-uint8_test': returned uint8 pixels", "float in [0, 1]")),
    Case("image-0-255", [*EVAL, *_ds('"bad-255"')],
         ("dataset 'bad-255_test': image values span [", "expected [0, 1]")),
    Case("image-uint8-before-training",
         ["recipe", "run", "{d}/train-data-uint8.toml", "--run-dir", "{d}/runs/{id}"],
         ("data: dataset 'bad-uint8': returned uint8 pixels (sample 0)",),
         absent=("runs/{id}/tecoa",)),
    Case("empty-dataset", [*EVAL, *_ds('"bad-empty"')],
         ("dataset 'bad-empty' (bad-empty_test) is empty: 0 samples",)),
    Case("empty-image-folder", [*EVAL, *_ds('{{dataset="image-folder", root="{d}/no-images"}}')],
         ("no-images: no images found under <class>/ folders",)),
    # -- checkpoints
    Case("checkpoint-wrong-architecture", [*EVAL, *_ds('"procedural-shapes"'),
                                           "--checkpoint", "{d}/clipx-small.pt"],
         ("clipx-small.pt: checkpoint does not fit this architecture", "shape mismatch",
          "visual.")),
    Case("checkpoint-runs-code", [*EVAL, *_ds('"procedural-shapes"'), "--checkpoint", "{d}/evil.pt"],
         ("evil.pt: refused to load", "would run code", "convert it to safetensors")),
    Case("checkpoint-garbage", [*EVAL, *_ds('"procedural-shapes"'), "--checkpoint", "{d}/garbage.pt"],
         ("garbage.pt: cannot read checkpoint",)),
    Case("checkpoint-missing", [*EVAL, *_ds('"procedural-shapes"'), "--checkpoint", "{d}/nope.pt"],
         ("model.checkpoint: file not found: ", "nope.pt")),
    # -- recipe values are data, never code
    Case("code-as-name", ["recipe", "show", "tecoa", "--set",
                          "model.source=\"__import__('os').system('touch {d}/pwned')\""],
         ("model.source: unknown model '__import__('os').system(",), absent=("pwned",)),
    Case("code-as-budget", ["recipe", "show", "tecoa", "--set",
                            "evaluate.alpha=\"__import__('os').system('touch {d}/pwned') or eps\""],
         ("evaluate.alpha: cannot evaluate", "use numbers, eps, + - * /"), absent=("pwned",)),
    Case("code-as-attack-param", ["recipe", "show", "tecoa", "--set",
                                  "evaluate.attacks=[{{name='pgd', alpha=\"().__class__ and eps\"}}]"],
         ("evaluate.attacks.0.alpha: cannot evaluate",)),
    Case("import-path-as-defense", ["recipe", "show", "tecoa", "--set",
                                    'defense.name="clip_robust_ext.training.defense:Defense"'],
         ("defense.name: unknown defense 'clip_robust_ext.training.defense:Defense'",)),
    Case("import-path-as-dataset", ["recipe", "show", "tecoa", "--set",
                                    'data.dataset="torchvision.datasets.CIFAR10"'],
         ("data.dataset: unknown dataset 'torchvision.datasets.CIFAR10'",)),
]  # fmt: skip


# -- issue 23 (reliability round 2): values a run would reject or misuse, refused up front
EV = [*EVAL, "--protocol", "clean", "--dataset", "procedural-shapes", "--n", "4"]
PGD = [*EVAL, "--protocol", "pgd", "--dataset", "procedural-shapes", "--n", "4"]


def _rs(*sets: str) -> list[str]:
    return ["recipe", "show", "tecoa", *(x for item in sets for x in ("--set", item))]


def _tiny(name: str) -> list[str]:
    return [*EVAL, *_ds('"procedural-shapes"'), "--checkpoint", "{d}/tiny-" + name + ".pt"]


_ONE_FIELD = "must contain exactly one '{{}}' (the class name) and no other fields"
_LABEL = "must be a simple name (letters, digits, - _ . +; not starting with '.' or '-')"
_MPS = getattr(torch.backends, "mps", None)
_GALLERY = "galleries={{source='karpathy', annotations='{d}/captions-%s.json', image_root='{d}'}}"

ROUND2 = [
    # -- templates: str.format would raise deep inside the zero-shot head
    Case("template-two-fields", [*EV, "--templates", "a {{}} of {{}}"],
         ("evaluate.templates: template 'a {{}} of {{}}'", _ONE_FIELD)),
    Case("template-named-field", [*EV, "--templates", "{{}} {{name}}"],
         ("template '{{}} {{name}}'", _ONE_FIELD)),
    Case("template-lone-brace", [*EV, "--templates", "{{}} {{"],
         ("template '{{}} {{' is not a valid format string", "write literal braces as")),
    Case("template-stray-close", [*EV, "--templates", "a {{}} }}"],
         ("is not a valid format string", "Single '}}'")),
    Case("template-index-field", [*EV, "--templates", "a {{0}} b {{}}"], (_ONE_FIELD,)),
    Case("template-attribute-field", [*EV, "--templates", "a {{}} {{0.x}}"], (_ONE_FIELD,)),
    Case("template-list-extra-field", _rs("data.templates=['a {{}}', 'b {{}} {{}}']"),
         ("data.templates.1: template 'b {{}} {{}}'", _ONE_FIELD)),
    Case("template-eval-named", _rs("evaluate.templates=['{{}} {{name}}']"),
         ("evaluate.templates.0: template '{{}} {{name}}'",)),
    Case("template-eval-dataset", [*EVAL, *_ds('{{dataset="procedural-shapes", templates="x {{}} {{"}}')],
         ("evaluate.datasets.0.templates: template 'x {{}} {{' is not a valid format string",)),
    # -- devices
    Case("device-cuda-abc", [*EV, "--device", "cuda:abc"],
         ("--device: unknown device 'cuda:abc' (did you mean 'cuda'?)", "use auto, cpu, cuda, cuda:N or mps")),
    Case("device-tpu", [*EV, "--device", "tpu"], ("--device: unknown device 'tpu'",)),
    Case("device-cpu-index", [*EV, "--device", "cpu:0"], ("--device: unknown device 'cpu:0'",)),
    Case("device-cuda-99", [*EV, "--device", "cuda:99"], ("--device: device 'cuda:99' requested but",)),
    Case("device-recipe-abc", _rs("recipe.device='cuda:abc'"), ("recipe.device: unknown device 'cuda:abc'",)),
    Case("device-recipe-cuda-99", _rs("recipe.device='cuda:99'"), ("recipe.device: device 'cuda:99' requested but",)),
    Case("device-recipe-number", _rs("recipe.device=0"), ("recipe.device: expected a string, got 0",)),
    *([Case("device-mps-absent", [*EV, "--device", "mps"],
            ("--device: device 'mps' requested but MPS is not available here",)),
       Case("device-recipe-mps-absent", _rs("recipe.device='mps'"),
            ("recipe.device: device 'mps' requested but MPS is not available here",))]
      if _MPS is None or not _MPS.is_available() else []),
    # -- seeds (numpy accepts [0, 2**32 - 1] only; torch overflows on 20 digits)
    Case("seed-20-digits", [*EV, "--seed", "12345678901234567890"],
         ("evaluate.seed: seed 12345678901234567890 is outside [0, 4294967295]",)),
    Case("seed-negative", [*EV, "--seed", "-1"], ("evaluate.seed: seed -1 is outside [0, 4294967295]",)),
    Case("seed-recipe-20-digits", _rs("recipe.seed=12345678901234567890"),
         ("recipe.seed: seed 12345678901234567890 is outside",)),
    Case("seed-recipe-negative", _rs("recipe.seed=-3"), ("recipe.seed: seed -3 is outside",)),
    Case("seed-recipe-2-pow-32", _rs("recipe.seed=4294967296"), ("recipe.seed: seed 4294967296 is outside",)),
    Case("seed-recipe-float", _rs("recipe.seed=1.5"), ("recipe.seed: expected an integer, got 1.5",)),
    Case("seed-defense-negative", _rs("defense.seed=-1"), ("defense.seed: seed -1 is outside",)),
    Case("seed-evaluate-huge", _rs("evaluate.seed=99999999999"), ("evaluate.seed: seed 99999999999 is outside",)),
    # -- ranges that made numbers meaningless or crashed after the work started
    Case("range-data-n-negative", _rs("data.n=-5"), ("data.n: must be an integer >= 1, got -5",)),
    Case("range-data-n-zero", _rs("data.n=0"), ("data.n: must be an integer >= 1, got 0",)),
    Case("range-image-size-zero", _rs("data.dataset='image-folder'", "data.root='{d}/folder'", "data.image_size=0"),
         ("data.image_size: must be an integer >= 1, got 0",)),
    Case("range-image-size-negative", [*EVAL, *_ds('{{dataset="image-folder", root="{d}/folder", image_size=-32}}')],
         ("evaluate.datasets.0.image_size: must be an integer >= 1, got -32",)),
    Case("range-eval-dataset-n-zero", [*EVAL, *_ds('{{dataset="procedural-shapes", n=0}}')],
         ("evaluate.datasets.0.n: must be an integer >= 1, got 0",)),
    Case("range-max-steps-zero", _rs("defense.max_steps=0"), ("defense: max_steps must be a positive integer, got 0",)),
    Case("range-lr-negative", _rs("defense.lr=-1e-3"), ("defense: lr must be a non-negative number, got -0.001",)),
    Case("range-lr-zero", _rs("defense.lr=0"), ("defense: lr must be positive, got 0.0",)),
    Case("range-batch-size-zero", _rs("defense.batch_size=0"), ("defense: batch_size must be a positive integer, got 0",)),
    Case("range-epochs-zero", _rs("defense.epochs=0"), ("defense: epochs must be a positive integer, got 0",)),
    Case("range-warmup-negative", _rs("defense.warmup_steps=-1"), ("defense: warmup_steps must be a non-negative integer",)),
    Case("range-grad-clip-negative", _rs("defense.grad_clip=-1.0"), ("defense: grad_clip must be a non-negative number",)),
    Case("range-momentum-inf", _rs("defense.momentum=inf"), ("defense.momentum: expected a finite number",)),
    Case("range-optimizer-unknown", _rs("defense.optimizer='adamm'"), ("defense: optimizer must be one of", "did you mean 'adam'")),
    Case("apt-attack-prompt", ["recipe", "show", "apt", "--set", "defense.attack_prompt='perturbed'"], ("defense.attack_prompt: 'perturbed' is not one of ['onfly', 'constant']",)),
    Case("range-trainable-last-k-0", _rs("defense.trainable='last-k:0'"), ("defense: trainable must be visual, text, both, prompt or last-k:N",)),
    Case("range-defense-steps-negative", _rs("defense.steps=-1"), ("defense.steps: must be an integer >= 0, got -1",)),
    Case("range-evaluate-steps-negative", _rs("evaluate.steps=-1"), ("evaluate.steps: must be an integer >= 1, got -1",)),
    Case("range-evaluate-steps-zero", _rs("evaluate.steps=0"), ("evaluate.steps: must be an integer >= 1, got 0",)),
    Case("range-attack-steps-negative", [*PGD, "--set", "attacks=[{{name='pgd', steps=-1}}]"],
         ("evaluate.attacks.0.steps: must be an integer >= 1, got -1",)),
    Case("range-attack-steps-zero", [*PGD, "--set", "attacks=[{{name='pgd', steps=0}}]"],
         ("evaluate.attacks.0.steps: must be an integer >= 1, got 0",)),
    Case("range-preset-steps-negative", [*PGD, "--set", "steps=-1"], ("evaluate.steps: must be an integer >= 1, got -1",)),
    Case("range-apgd-restarts-zero", [*PGD, "--set", "attacks=[{{name='apgd', n_restarts=0}}]"],
         ("evaluate.attacks.0.n_restarts: must be an integer >= 1, got 0",)),
    Case("range-recipe-attack-steps", _rs("evaluate.attacks=[{{name='cw', params={{steps=-2}}}}]"),
         ("evaluate.attacks.0.steps: must be an integer >= 1, got -2",)),
    # -- labels name files in the run dir
    Case("label-dotdot", [*EV, "--label", ".."], ("--label: '..'", _LABEL)),
    Case("label-results-json", [*EV, "--label", "results.json"], ("--label: 'results.json'", "not one the run dir uses")),
    Case("label-path", [*EV, "--label", "a/b"], ("--label: 'a/b'", _LABEL)),
    Case("label-hidden", [*EV, "--label", ".hidden"], ("--label: '.hidden'",)),
    Case("label-eval-folder", [*EV, "--label", "eval"], ("--label: 'eval'",)),
    Case("label-recipe-results", _rs("defense.label='results.json'"), ("defense.label: 'results.json'",)),
    Case("label-recipe-lock", _rs("defense.label='run.lock'"), ("defense.label: 'run.lock'",)),
    Case("label-recipe-versions", _rs("defense.label='versions.json'"), ("defense.label: 'versions.json'",)),
    Case("label-recipe-parent", _rs("defense.label='../x'"), ("defense.label: '../x'",)),
    # -- recipe paths that are not regular files, and TOML that recurses
    Case("recipe-path-directory", ["recipe", "show", "{d}/folder.toml"],
         ("recipe path is a directory, not a file: ", "folder.toml")),
    Case("recipe-path-fifo", ["recipe", "show", "{d}/fifo.toml"],
         ("recipe path is not a regular file (a FIFO, socket or device)",)),
    Case("recipe-path-symlink-loop", ["recipe", "show", "{d}/loop.toml"],
         ("cannot open the recipe file (Too many levels of symbolic links)",)),
    Case("recipe-path-dangling-symlink", ["recipe", "show", "{d}/dangling.toml"],
         ("recipe file is a broken symlink: ", "dangling.toml")),
    Case("recipe-run-directory", ["recipe", "run", "{d}/folder.toml", "--run-dir", "{d}/runs/{id}"],
         ("recipe path is a directory",), absent=("runs/{id}",)),
    Case("recipe-deep-nesting", ["recipe", "show", "{d}/deep.toml"], ("deep.toml: invalid TOML: nested too deeply",)),
    # -- images: named, never a silent white picture or a nameless exit 1
    Case("image-corrupt-file", [*EVAL, *_ds('{{dataset="image-folder", root="{d}/corrupt"}}')],
         ("corrupt/b_cls/0.png: not an image file PIL can read",)),
    Case("image-truncated-file", [*EVAL, *_ds('{{dataset="image-folder", root="{d}/truncated"}}')],
         ("truncated/b_cls/0.png: corrupt or truncated image",)),
    # -- weights that would be scored as if they were a model
    Case("weights-nan", _tiny("nan"), ("tiny-nan.pt: weight 'visual.proj' has", "non-finite value(s) (NaN or inf)")),
    Case("weights-inf", _tiny("inf"), ("tiny-inf.pt: weight 'visual.proj' has", "non-finite")),
    Case("weights-int8", _tiny("int8"), ("tiny-int8.pt: weight 'visual.proj' is int8, not floating point",)),
    # -- run-state files cut by a crash or written by hand
    Case("state-lock-truncated", ["recipe", "run", "{d}/train-data-missing.toml", "--run-dir", "{d}/locks/malformed"],
         ("an earlier run (pid -1, started", "pass --resume to continue it")),
    Case("state-lock-not-an-object", ["recipe", "run", "{d}/train-data-missing.toml", "--run-dir", "{d}/locks/list"],
         ("did not finish; pass --resume",)),
    Case("state-lock-time-overflow", ["recipe", "run", "{d}/train-data-missing.toml", "--run-dir", "{d}/locks/huge-time"],
         ("started an unknown time) did not finish",)),
    Case("state-done-json-truncated", ["recipe", "run", "{d}/eval-only.toml", "--run-dir", "{d}/stale"],
         ("tecoa: the model in", "was trained from other inputs ((no key recorded))", "run the stage that trains it again")),
    # -- more values that used to raise deep inside (found while fixing the above)
    Case("set-nested-too-deeply", _rs("data.n=" + "[" * 800 + "]" * 800),
         ("--set data.n: value nested too deeply",)),
    Case("captions-not-json", [*EVAL, "--protocol", "coattack-retrieval", "--set", _GALLERY % "cut"],
         ("captions-cut.json: not valid JSON",)),
    Case("captions-wrong-layout", [*EVAL, "--protocol", "coattack-retrieval", "--set", _GALLERY % "other"],
         ("captions-other.json: not a Karpathy or ALBEF caption file (bad entry: KeyError('caption'))",)),
    # -- retrieval attacks (SGA)
    Case("retrieval-attack-in-classification", [*EVAL, "--protocol", "pgd", "--attack", "sga", "--dataset", "procedural-shapes", "--n", "2"],
         ("attack 'sga' attacks image-text retrieval", "modes = [..., 'sga']")),
    Case("retrieval-attack-param-unknown", [*EVAL, "--protocol", "coattack-retrieval", "--set", "modes=['clean', 'sga']", "--set", "attack_params={{sga={{scale=[0.5]}}}}"],
         ("attack_params.sga.scale: unknown key",)),
]  # fmt: skip
CASES += ROUND2

# -- issue 34 (reliability round 3)
_LONG = "a" * 300
ROUND3 = [
    # -- a model's own device is a device name too
    Case("device-model-arg-tpu", [*EV, "--model-arg", 'device="tpu"'],
         ("model.device: unknown device 'tpu'", "use auto, cpu, cuda, cuda:N or mps")),
    Case("device-model-arg-cuda-abc", [*EV, "--model-arg", 'device="cuda:abc"'],
         ("model.device: unknown device 'cuda:abc'",)),
    Case("device-recipe-model-tpu", _rs("model.device='tpu'"), ("model.device: unknown device 'tpu'",)),
    Case("device-recipe-model-number", _rs("model.device=3"), ("model.device: expected a string, got 3",)),
    Case("device-recipe-model-cuda-99", _rs("model.device='cuda:99'"),
         ("model.device: device 'cuda:99' requested but",)),
    # -- budgets that an fp32 attack would not use as written
    Case("eps-underflow-cli", [*PGD, "--eps", "1e-400"],
         ("evaluate.eps.0: '1e-400' is too small to represent", "would use 0.0")),
    Case("eps-underflow-set", _rs("defense.eps=1e-400"),
         ("--set defense.eps: number 1e-400 is not zero but is 0.0 as a float",)),
    Case("eps-underflow-set-string", _rs("defense.eps='1e-400'"), ("defense.eps: '1e-400' is too small",)),
    Case("eps-fp32-subnormal", _rs("evaluate.eps=['1e-40']"), ("evaluate.eps.0: '1e-40' is too small",)),
    Case("eps-expression-underflow", _rs("evaluate.alpha='eps*1e-400'"),
         ("evaluate.alpha: cannot evaluate 'eps*1e-400': 1e-400 is not representable as a float",)),
    Case("eps-expression-overflow", _rs("evaluate.alpha='eps/1e400'"),
         ("evaluate.alpha: cannot evaluate 'eps/1e400': 1e400 is not representable", "would be inf")),
    Case("eps-underflow-attack-alpha", [*PGD, "--set", "attacks=[{{name='pgd', alpha='1e-400'}}]"],
         ("evaluate.attacks.0.alpha: '1e-400' is too small",)),
    # -- names and paths past the file system's limits, refused before any work
    Case("label-300-chars", _rs(f"defense.label='{_LONG}'"), ("defense.label: 'aaaa", "is 300 bytes long")),
    Case("label-300-chars-baseline", ["recipe", "show", "mmcoa", "--set", f"baselines.0.label='{_LONG}'"],
         ("baselines.0.label: 'aaaa", "is 300 bytes long")),
    Case("label-300-chars-cli", [*EV, "--label", _LONG], ("--label: 'aaaa", "at most 200 bytes")),
    Case("recipe-name-300-chars", _rs(f"recipe.name='{_LONG}'"), ("recipe.name: 'aaaa", "is 300 bytes long")),
    Case("run-dir-path-too-long", [*EV, "--run-dir", "{d}/" + "x/" * 1600],
         ("run dir: the path is", "the system limit is 4096")),
    # -- lock files with absurd values: a stale lock, never an exception
    Case("state-lock-pid-1e30", ["recipe", "run", "{d}/train-data-missing.toml", "--run-dir", "{d}/locks/pid-1e30"],
         ("an earlier run (pid -1, started", "pass --resume to continue it")),
    Case("state-lock-pid-infinity", ["recipe", "run", "{d}/train-data-missing.toml", "--run-dir", "{d}/locks/pid-inf"],
         ("an earlier run (pid -1, started an unknown time) did not finish",)),
]  # fmt: skip
CASES += ROUND3


def _fill(text: str, d: Path, case: Case) -> str:
    return text.replace("{id}", case.id).format(d=d)


def invoke(argv: list[str], env: dict[str, str] | None = None):
    result = CliRunner().invoke(cli, argv, env=env, prog_name="clipx")
    # CliRunner turns an unhandled exception into exit code 1 with result.exception set: the
    # real entry point would have printed a traceback
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"unhandled {type(result.exception).__name__}: {result.exception}"
    )
    return result


PROGRESS_BAR = re.compile(r"^\S+: +\d+%\|")  # tqdm's "dataset:  40%|####  | 2/5 [...]"


def _lines(stderr: str) -> list[str]:
    """Lines as a terminal shows them: a progress bar is redrawn after '\r' and cleared."""
    return [x.strip() for x in re.split(r"[\r\n]+", stderr) if x.strip()]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2(case, d, record_property):
    argv = [_fill(a, d, case) for a in case.argv]
    result = invoke(argv, case.env)
    lines = _lines(result.stderr)
    record_property("exit_code", result.exit_code)  # (--junitxml keeps what each case printed)
    record_property("message", lines[-1] if lines else "")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [x for x in lines if x.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    # the runner's progress lines ("clipx: ...", progress bars) may precede it; nothing else may
    assert all(x.startswith(("clipx: ", "Error: ")) or PROGRESS_BAR.search(x) for x in lines), (
        result.stderr
    )
    for text in case.expect:
        assert _fill(text, d, case) in errors[0], errors[0]
    assert result.stdout == ""
    for rel in case.absent:
        assert not (d / _fill(rel, d, case)).exists(), f"{rel} was created"


def test_table_covers_every_required_kind_of_bad_input():
    kinds = {c.id.split("-")[0] for c in CASES}
    assert {"malformed", "unknown", "wrong", "eps", "dataset", "classnames", "image", "empty",
            "checkpoint", "code"} <= kinds  # fmt: skip


@pytest.mark.slow  # a fresh interpreter importing torch: 10-20 s on a loaded 2-core machine
def test_console_entry_point_prints_one_line_for_a_deep_error(d):
    """The real console script (not CliRunner): a crafted checkpoint, exit 2, no traceback."""
    cmd = [sys.executable, "-m", "clip_robust_ext", "eval", "--model", "open_clip",
           "--arch", "clipx-tiny", "--protocol", "clean", "--dataset", "procedural-shapes",
           "--checkpoint", str(d / "evil.pt"), "--run-dir", str(d / "runs" / "subprocess")]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert out.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert "would run code" in out.stderr
    assert not Path("/tmp/clipx-pickle-ran").exists()


# ------------------------------------------------------------ property-based: mutated recipes

SHIPPED = sorted((REPO / "recipes").glob("*.toml"))
IDENTITY = {("model", "source"), ("data", "dataset"), ("defense", "name"), ("pretrain", "name"),
            ("evaluate", "protocol")}  # fmt: skip


def _identity(path, key) -> bool:
    """Whether path.key holds a registry name (and is required in its table)."""
    if path[:1] == ("profiles",):
        path = path[2:]
    if len(path) == 1:
        return (path[0], key) in IDENTITY
    if len(path) == 2 and path[0] == "baselines":
        return key == "name"
    if len(path) == 3 and path[0] == "evaluate":
        return (path[1], key) in (("datasets", "dataset"), ("attacks", "name"))
    return False


# free text, or parameters typed Any because the Python API also takes objects there (a masked-LM
# model): any TOML value passes validation (a wrong one fails when the attack is built)
UNTYPED = {"description", "unset", "masked_lm", "tokenizer", "anchors"}
BAD_EPS = ["4/0", "four", "300/255", "-1/255", "1/255/2", "", "nan", "inf", "1e999", "0x10",
           "eps/0", "eps**2", "__import__('os').system('touch /tmp/clipx-recipe-ran') or eps"]  # fmt: skip
BAD_TOML_LINES = ["= 1", "[model", "key =", 'x = "unterminated', "[[]]", "a = 1 = 2", "[.x]",
                  "\"\"\" = 3", "a.=1", "x = [1,", "x = {a = 1"]  # fmt: skip
CODE = "__import__('os').system('touch /tmp/clipx-recipe-ran')"
COUNT = {"examples": 0, "kinds": {}}
# CLIPX_FUZZ_EXAMPLES=5000 fuzzes deeper, with fresh random examples each run
EXAMPLES = int(os.environ.get("CLIPX_FUZZ_EXAMPLES", "200"))
DERANDOMIZE = "CLIPX_FUZZ_EXAMPLES" not in os.environ


def _tables(node, path=()):
    """(path, table) for every table a mutation may touch: sections, inline tables, [[arrays]],
    profile sections - not the level of profile names (any profile name is valid)."""
    if isinstance(node, dict):
        if path != ("profiles",):
            yield path, node
        for k, v in node.items():
            yield from _tables(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _tables(v, (*path, i))


def _eps_like(key) -> bool:
    return isinstance(key, str) and (key in ("eps", "alpha") or key.endswith(("_eps", "_alpha")))


def _wrong_type(value):
    if isinstance(value, bool):
        return "zq"
    if isinstance(value, (int, float)):
        return "zq"
    if isinstance(value, str):
        return 12345
    return 12345  # arrays and tables


@st.composite
def broken_recipes(draw) -> tuple[str, str, str]:
    """(kind, recipe name, text): a shipped recipe with one change that makes it invalid."""
    path = draw(st.sampled_from(SHIPPED))
    text = path.read_text()
    kind = draw(
        st.sampled_from(
            ["bad-toml-line", "garbage-bytes", "rename-key", "add-key", "drop-required",
             "wrong-type", "bad-eps", "unknown-name", "code-string", "unknown-section"]
        )
    )  # fmt: skip
    if kind == "bad-toml-line":  # a broken line between two lines: never valid TOML
        lines = text.splitlines()
        at = draw(st.integers(0, len(lines)))
        junk = draw(st.sampled_from(BAD_TOML_LINES))
        return kind, path.stem, "\n".join([*lines[:at], junk, *lines[at:]]) + "\n"
    if kind == "garbage-bytes":
        blob = draw(st.binary(min_size=1, max_size=64))
        return kind, path.stem, blob.decode("latin-1")
    doc = tomllib.loads(text)
    tables = [(p, t) for p, t in _tables(doc) if t or p == ()]
    if kind == "unknown-section":
        doc[draw(st.sampled_from(["zq", "defence", "evaluation", "models", "Model"]))] = {"a": 1}
    elif kind == "add-key":
        p, table = draw(st.sampled_from([(p, t) for p, t in tables if p]))
        table["zq_" + draw(st.text(alphabet="abcxyz_", min_size=0, max_size=4))] = 1
    elif kind == "rename-key":
        p, table = draw(st.sampled_from([(p, t) for p, t in tables if p]))
        key = draw(st.sampled_from(sorted(table)))
        table[key + "_zq"] = table.pop(key)
    elif kind == "drop-required":  # required keys of the base recipe (profiles inherit them)
        options = [
            (p, k) for p, t in tables if p and p[0] != "profiles" for k in t if _identity(p, k)
        ]
        p, key = draw(st.sampled_from(options))
        del _at(doc, p)[key]
    elif kind == "wrong-type":
        options = [(p, k) for p, t in tables if p for k in t if k not in UNTYPED]
        p, key = draw(st.sampled_from(options))
        table = _at(doc, p)
        table[key] = _wrong_type(table[key])
    elif kind in ("bad-eps", "code-string"):
        options = [(p, k) for p, t in tables if p for k in t if _eps_like(k)]
        if kind == "code-string":
            options += [(p, k) for p, t in tables if p for k in t if _identity(p, k)]
        p, key = draw(st.sampled_from(options))
        table = _at(doc, p)
        bad = (
            CODE if kind == "code-string" and not _eps_like(key) else draw(st.sampled_from(BAD_EPS))
        )
        table[key] = [bad] if isinstance(table[key], list) else bad
    elif kind == "unknown-name":
        options = [(p, k) for p, t in tables if p for k in t if _identity(p, k)]
        p, key = draw(st.sampled_from(options))
        _at(doc, p)[key] = "zq-" + draw(st.text(alphabet="abcdefghij-", min_size=0, max_size=8))
    return kind, path.stem, dump_toml(doc)


def _at(doc, path):
    node = doc
    for part in path:
        node = node[part]
    return node


def test_mutated_shipped_recipes_fail_cleanly_at_validation(tmp_path, record_property):
    folder = tmp_path / "mutants"
    folder.mkdir()
    sentinel = Path("/tmp/clipx-recipe-ran")
    sentinel.unlink(missing_ok=True)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=DERANDOMIZE,  # by default the same 200 recipes on every run (reproducible)
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(mutant=broken_recipes())
    def check(mutant):
        kind, stem, text = mutant
        COUNT["examples"] += 1
        COUNT["kinds"][kind] = COUNT["kinds"].get(kind, 0) + 1
        path = folder / f"{stem}.toml"
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        result = invoke(["recipe", "show", str(path)])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2, f"{kind}: exit {result.exit_code}\n{text}\n{result.output}"
        assert len(lines) == 1 and lines[0].startswith("Error: "), (kind, result.stderr)
        assert "Traceback" not in result.output and result.stdout == ""
        assert not sentinel.exists(), f"{kind}: a recipe value ran code\n{text}"

    check()
    print(f"\nhypothesis: {COUNT['examples']} mutated recipes, by kind {COUNT['kinds']}")
    record_property("hypothesis_examples", COUNT["examples"])
    assert COUNT["examples"] >= 100
    assert len(COUNT["kinds"]) == 10  # every kind of mutation was tried


def test_object_tags_in_recipe_strings_are_plain_data(tmp_path):
    """A TOML document cannot carry objects: the strangest valid values are still just data."""
    path = tmp_path / "odd.toml"
    path.write_text(
        textwrap.dedent(
            """
            [recipe]
            name = "odd"
            [model]
            source = "open_clip"
            arch = "clipx-tiny"
            pretrained = "!!python/object/apply:os.system ['touch /tmp/clipx-recipe-ran']"
            [evaluate]
            protocol = "clean"
            datasets = ["procedural-shapes"]
            """
        )
    )
    shown = invoke(["recipe", "show", str(path), "--json"])
    assert shown.exit_code == 0  # accepted at validation as the plain string it is...
    assert "!!python/object/apply" in shown.stdout
    assert not Path("/tmp/clipx-recipe-ran").exists()


# ----------------------------------------------------------- fuzz: the eval CLI's options

BAD_TEMPLATE_TAILS = ["{", "}", " {}", " {name}", "{0}", "{!r}", " {0.x}", "{:}", "{{}"]
BAD_LABELS = ["..", ".", ".hidden", "-x", "a/b", "../up", "a b", "results.json", "eval", "clip",
              "run.lock", "versions.json", "é"]  # fmt: skip
BAD_DEVICES = ["cuda:abc", "tpu", "gpu", "cpu:0", "cuda:-1", "cuda:99", "CUDA", "", "cuda:", "xla"]


@st.composite
def broken_eval_commands(draw) -> tuple[str, list[str]]:
    """(kind, argv): a valid `clipx eval` command with one option or dataset/model argument
    made invalid. Every one must be refused with one line, exit 2, before any number."""
    kind = draw(
        st.sampled_from(
            ["seed", "device", "template", "label", "n", "eps", "attack", "dataset-name",
             "dataset-arg", "dataset-n", "image-size", "attack-steps", "model", "model-arg",
             "checkpoint"]
        )
    )  # fmt: skip
    argv = ["eval", "--model", "open_clip", "--arch", "clipx-tiny", "--protocol", "pgd"]
    dataset, extra = '"procedural-shapes"', []
    unknown = "zq-" + draw(st.text(alphabet="abcdefghij-", min_size=0, max_size=6))
    if kind == "seed":
        extra = ["--seed", str(draw(st.one_of(st.integers(max_value=-1), st.integers(2**32))))]
    elif kind == "device":
        extra = ["--device", draw(st.sampled_from(BAD_DEVICES))]
    elif kind == "template":
        head = draw(st.text(alphabet="ab ", max_size=3))
        extra = ["--templates", head + "{}" + draw(st.sampled_from(BAD_TEMPLATE_TAILS))]
    elif kind == "label":
        extra = ["--label", draw(st.sampled_from(BAD_LABELS))]
    elif kind == "n":
        extra = ["--n", str(draw(st.integers(max_value=0)))]
    elif kind == "eps":
        extra = ["--eps", draw(st.sampled_from([e for e in BAD_EPS if "eps" not in e]))]
    elif kind == "attack":
        extra = ["--attack", unknown]
    elif kind == "dataset-name":
        dataset = f'"{unknown}"'
    elif kind == "dataset-arg":
        dataset = '{dataset="procedural-shapes", ' + unknown.replace("-", "_") + "=1}"
    elif kind == "dataset-n":
        dataset = '{dataset="procedural-shapes", n=' + str(draw(st.integers(max_value=0))) + "}"
    elif kind == "image-size":
        size = draw(st.one_of(st.integers(max_value=0), st.just('"big"')))
        dataset = '{dataset="image-folder", root="/tmp", image_size=' + str(size) + "}"
    elif kind == "attack-steps":
        steps = draw(st.integers(max_value=0))
        name = draw(st.sampled_from(["pgd", "bim", "cw", "apgd"]))
        key = "n_restarts" if name == "apgd" and draw(st.booleans()) else "steps"
        extra = ["--set", f"attacks=[{{name='{name}', {key}={steps}}}]"]
    elif kind == "model":
        argv[2] = unknown
    elif kind == "model-arg":
        extra = ["--model-arg", f"{unknown.replace('-', '_')}=1"]
    elif kind == "checkpoint":
        extra = ["--checkpoint", f"/no/such/dir/{unknown}.pt"]
    argv += ["--set", f"datasets=[{dataset}]", "--n", "4", "--run-dir", "{run}", *extra]
    return kind, argv


def test_mutated_eval_commands_fail_cleanly(tmp_path):
    counts: dict[str, int] = {}

    @settings(
        max_examples=max(EXAMPLES // 2, 100),
        deadline=None,
        derandomize=DERANDOMIZE,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(command=broken_eval_commands())
    def check(command):
        kind, argv = command
        counts[kind] = counts.get(kind, 0) + 1
        run = tmp_path / f"run-{sum(counts.values())}"
        result = invoke([a.replace("{run}", str(run)) for a in argv])
        lines = _lines(result.stderr)
        assert result.exit_code == 2, f"{kind}: exit {result.exit_code}: {argv}\n{result.output}"
        assert lines and lines[-1].startswith("Error: "), (kind, result.stderr)
        assert sum(x.startswith("Error: ") for x in lines) == 1 and "Traceback" not in result.output
        assert result.stdout == "" and not (run / "results.json").exists()  # no number

    check()
    assert len(counts) == 15  # every kind of mutation was tried
