"""`clipx data` (issue #17 item 8): Tiny-ImageNet preparation from a fake archive in the real
distribution layout, the loader reading the result, missing-dataset errors naming their fix, and
`--download` reaching torchvision's constructors (offline: the download is attempted and refused)."""

from __future__ import annotations

import io
import zipfile

import pytest
from click.testing import CliRunner
from PIL import Image

from clip_robust_ext.cli import cli
from clip_robust_ext.data import load_suite_dataset

# wnid -> (words.txt entry, colour of its images)
CLASSES = {
    "n01443537": ("goldfish, Carassius auratus", (250, 120, 0)),
    "n01629819": ("European fire salamander, Salamandra salamandra", (0, 200, 40)),
    "n02099601": ("golden retriever", (30, 60, 230)),
}


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _fake_tiny_imagenet(path) -> list[tuple[str, str]]:
    """tiny-imagenet-200.zip as distributed: train/<wnid>/images/, val/images/ + annotations
    (classes interleaved), wnids.txt, words.txt (with classes not in the 200, as the real one)."""
    val = [(f"val_{i}.JPEG", wnid) for i, wnid in enumerate(list(CLASSES) * 2)]
    with zipfile.ZipFile(path, "w") as z:
        base = "tiny-imagenet-200/"
        z.writestr(base + "wnids.txt", "\n".join(CLASSES) + "\n")
        words = [f"{w}\t{name}" for w, (name, _) in CLASSES.items()] + ["n00001740\tentity"]
        z.writestr(base + "words.txt", "\n".join(words) + "\n")
        for wnid, (_, colour) in CLASSES.items():
            z.writestr(base + f"train/{wnid}/{wnid}_boxes.txt", f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
            for i in range(2):
                z.writestr(base + f"train/{wnid}/images/{wnid}_{i}.JPEG", _jpeg(colour))
        lines = []
        for name, wnid in val:
            z.writestr(base + f"val/images/{name}", _jpeg(CLASSES[wnid][1]))
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
        z.writestr(base + "val/val_annotations.txt", "\n".join(lines) + "\n")
        z.writestr(base + "test/images/test_0.JPEG", _jpeg((0, 0, 0)))
    return val


def test_prepare_tiny_imagenet_gives_the_layout_the_loader_reads(tmp_path):
    archive = tmp_path / "tiny-imagenet-200.zip"
    val = _fake_tiny_imagenet(archive)
    root = tmp_path / "data"
    runner = CliRunner()
    missing = runner.invoke(cli, ["data", "list", "tinyimagenet", "--root", str(root)])
    assert "missing" in missing.output and "clipx data prepare tiny-imagenet" in missing.output

    result = runner.invoke(
        cli, ["data", "prepare", "tiny-imagenet", str(archive), "--root", str(root)]
    )
    assert result.exit_code == 0, result.output
    base = root / "tiny-imagenet-200"
    for wnid in CLASSES:  # val images sorted into their annotated class folders
        expected = sorted(name for name, w in val if w == wnid)
        assert sorted(p.name for p in (base / "val_folders" / wnid).iterdir()) == expected
    assert not (base / "val_folders.partial").exists()

    test = load_suite_dataset("tinyimagenet", root, split="test")
    assert test.classnames == ["goldfish", "European fire salamander", "golden retriever"]
    assert len(test) == len(val)
    colours = [c for _, c in CLASSES.values()]
    for i in range(len(test)):  # every image carries its class colour: labels follow annotations
        image, label = test[i]
        pixel = (image[:, 32, 32] * 255).round().tolist()
        assert max(abs(a - b) for a, b in zip(pixel, colours[label])) < 8
    train = load_suite_dataset("tinyimagenet", root, split="train")
    assert len(train) == 6 and sorted(train.targets) == [0, 0, 1, 1, 2, 2]

    listed = runner.invoke(cli, ["data", "list", "tinyimagenet", "--root", str(root)])
    assert "present  6 images, 3 classes" in listed.output

    not_zip = tmp_path / "bad.zip"
    not_zip.write_text("not a zip")
    bad = runner.invoke(
        cli, ["data", "prepare", "tiny-imagenet", str(not_zip), "--root", str(root)]
    )
    assert bad.exit_code == 2 and "is not a zip file" in bad.output


def _eval(tmp_path, *extra: str):
    return CliRunner().invoke(
        cli,
        ["eval", "--model", "clipx-tiny", "--protocol", "clean", "--n", "2"]
        + ["--run-dir", str(tmp_path / "run"), *extra],
    )


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Empty data root; any HTTP(S) request goes to a closed local port and is refused."""
    monkeypatch.setenv("CLIPX_DATA", str(tmp_path / "data"))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)


def test_missing_dataset_names_the_command_that_fixes_it(tmp_path, no_network):
    result = _eval(tmp_path, "--dataset", "cifar10")
    assert result.exit_code == 2
    assert "not found under" in result.output and "clipx data download cifar10" in result.output
    result = _eval(tmp_path, "--dataset", "tinyimagenet")
    assert result.exit_code == 2
    assert "clipx data prepare tiny-imagenet tiny-imagenet-200.zip" in result.output


def test_download_switch_reaches_torchvision(tmp_path, no_network):
    # with --download torchvision tries to fetch CIFAR-10 (refused here); without, it never does
    result = _eval(tmp_path, "--dataset", "cifar10", "--download")
    assert result.exit_code == 1, result.output
    assert "download into" in result.output and "Connection refused" in result.output

    recipe = tmp_path / "eval.toml"
    recipe.write_text(
        '[recipe]\nname = "dl"\n[model]\nsource = "open_clip"\narch = "clipx-tiny"\n'
        '[evaluate]\nprotocol = "clean"\nn_samples = 2\ndatasets = ["cifar10"]\n'
    )
    run = ["recipe", "run", str(recipe), "--run-dir", str(tmp_path / "r")]
    refused = CliRunner().invoke(cli, [*run, "--download"])
    assert refused.exit_code == 1 and "Connection refused" in refused.output, refused.output
    offline = CliRunner().invoke(cli, run)
    assert offline.exit_code == 2 and "clipx data download cifar10" in offline.output

    download = CliRunner().invoke(cli, ["data", "download", "tecoa-16"])
    assert download.exit_code == 1 and "Connection refused" in download.output
