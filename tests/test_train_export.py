"""Trained checkpoints export to plain open_clip weights that open_clip alone loads, same logits."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_clip

from clip_robust_ext.data import ProceduralShapes
from clip_robust_ext.models import ZeroShotClassifier
from clip_robust_ext.models.clip import CONFIG_DIR
from clip_robust_ext.training import TrainConfig, export_open_clip, train


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _open_clip_logits(model, images, prompts, mean, std):
    """Zero-shot logits written with open_clip only (no clipx code)."""
    x = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    tokenizer = open_clip.get_tokenizer("clipx-tiny")
    with torch.no_grad():
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
        return model.logit_scale.exp() * img @ txt.t()


def test_export_round_trip_through_open_clip(tmp_path):
    data = ProceduralShapes("train", n=16, seed=2)
    loaded = tiny_clip()
    train(
        loaded,
        "ft-standard",
        data,
        TrainConfig(max_steps=2, batch_size=8, lr=1e-3),
        tmp_path / "run",
        progress=False,
    )
    images = torch.stack([data[i][0] for i in range(6)])
    zs = ZeroShotClassifier(loaded, data.classnames).eval()
    with torch.no_grad():
        expected = zs(images)

    exported = export_open_clip(
        tmp_path / "run", tmp_path / "exported.pt"
    )  # from the training checkpoint
    open_clip.add_model_config(
        str(CONFIG_DIR / "clipx-tiny.json")
    )  # what a user of the config does
    for path in (exported, tmp_path / "run" / "final.pt"):
        model = open_clip.create_model("clipx-tiny", pretrained=str(path)).eval()
        prompts = [f"This is a photo of a {c}" for c in data.classnames]
        got = _open_clip_logits(model, images, prompts, loaded.mean, loaded.std)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # and the export is not just the random init
    fresh = tiny_clip()
    assert not torch.equal(fresh.model.visual.conv1.weight, model.visual.conv1.weight)
