"""Data layer: procedural determinism, k-shot determinism, JPEG tar source, suite errors."""

from __future__ import annotations

import io
import tarfile

import pytest
import torch
from PIL import Image

from clip_robust_ext.data import (
    ProceduralShapes,
    TarImageFolder,
    few_shot_indices,
    load_suite_dataset,
    sample_indices,
)
from clip_robust_ext.errors import ClipxUsageError


def test_procedural_is_a_pure_function_of_seed_split_index():
    a, b = ProceduralShapes("train", n=20, seed=3), ProceduralShapes("train", n=20, seed=3)
    for i in (0, 7, 19):
        xa, ya = a[i]
        xb, yb = b[i]
        assert torch.equal(xa, xb) and ya == yb
    assert not torch.equal(a[0][0], ProceduralShapes("test", n=20, seed=3)[0][0])
    assert not torch.equal(a[0][0], ProceduralShapes("train", n=20, seed=4)[0][0])
    x, y = a[5]
    assert x.shape == (3, 32, 32) and x.min() >= 0 and x.max() <= 1
    assert a.classnames[y] in a.caption(5)


def test_procedural_classes_are_visually_distinct():
    ds = ProceduralShapes("train", n=200, seed=0)
    xs = torch.stack([ds[i][0] for i in range(200)])
    ys = torch.tensor([ds[i][1] for i in range(200)])
    assert sorted(set(ys.tolist())) == list(range(10))
    # images vary within a class (colour, pose, texture) - not one template per class
    assert xs[ys == 0].std(0).mean() > 0.05


def test_sample_and_few_shot_indices_are_deterministic():
    assert sample_indices(100, 10, seed=1) == sample_indices(100, 10, seed=1)
    assert sample_indices(100, 10, seed=1) != sample_indices(100, 10, seed=2)
    assert sample_indices(5, None, seed=0) == [0, 1, 2, 3, 4]
    targets = [i % 4 for i in range(40)]
    k = few_shot_indices(targets, 3, seed=0)
    assert k == few_shot_indices(targets, 3, seed=0)
    assert len(k) == 12 and all(sum(targets[i] == c for i in k) == 3 for c in range(4))
    assert k != few_shot_indices(targets, 3, seed=1)


def _jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="JPEG")
    return buf.getvalue()


def test_tar_image_folder(tmp_path):
    path = tmp_path / "mini.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for cls, colour in (("b_cls", (0, 0, 255)), ("a_cls", (255, 0, 0))):
            for j in range(2):
                data = _jpeg(colour)
                info = tarfile.TarInfo(f"test/{cls}/{j}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    ds = TarImageFolder(path, "test")
    assert ds.classnames == ["a cls", "b cls"] and len(ds) == 4
    x, y = ds[0]
    assert y == 0 and x.shape == (3, 8, 8) and x[0].mean() > 0.9  # red = class a_cls
    with pytest.raises(ClipxUsageError, match="no images"):
        TarImageFolder(path, "train")


def test_missing_suite_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ClipxUsageError, match="not found"):
        load_suite_dataset("cifar10", root=tmp_path, download=False)
    with pytest.raises(ClipxUsageError, match="did you mean 'cifar100'"):
        load_suite_dataset("cifar1000", root=tmp_path)
