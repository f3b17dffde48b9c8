"""Backbones beyond ViT/ResNet CLIP (issue #17 item 3): SigLIP (sigmoid head with logit_bias),
EVA-02, ConvNeXt and MobileCLIP, each as a tiny random-init config of its own kind
(clip_robust_ext/models/configs/clipx-tiny-*.json over timm towers of that family), through
ZeroShotClassifier, the attacks and the Trainer."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from torch import nn

from clip_robust_ext.attacks import build_attack
from clip_robust_ext.data import ProceduralShapes
from clip_robust_ext.models import ZeroShotClassifier, load_clip
from clip_robust_ext.training import TrainConfig, train

# config -> (open_clip model class, timm trunk class, sigmoid head)
FAMILIES = {
    "clipx-tiny-sigmoid": ("CustomTextCLIP", "VisionTransformer", True),  # SigLIP: MAP pooling
    "clipx-tiny-eva": ("CustomTextCLIP", "Eva", False),
    "clipx-tiny-convnext": ("CLIP", "ConvNeXt", False),
    "clipx-tiny-mobileclip": ("CustomTextCLIP", "FastVit", False),
}
CLASSES = ["circle", "square", "triangle", "star", "cross"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(name: str):
    torch.manual_seed(0)
    loaded = load_clip(name)
    # BatchNorm towers (FastViT) at init shrink activations ~10x per stage with identity running
    # stats: image features would barely depend on the image. Calibrate them on noise, as a
    # trained network's statistics would be, so the attacks have a gradient to follow.
    norms = [
        m for m in loaded.model.visual.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    if norms:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average
        loaded.model.visual.train()
        with torch.no_grad():
            loaded.model.visual(
                torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(3))
            )
        loaded.model.eval()
    if FAMILIES[name][2]:  # a bias far from init, so a dropped bias cannot pass unnoticed
        with torch.no_grad():
            loaded.model.logit_bias.fill_(-3.5)
    return loaded


@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_equal_open_clip_zero_shot(name: str) -> None:
    loaded = _tiny(name)
    model = loaded.model
    model_cls, trunk_cls, sigmoid = FAMILIES[name]
    assert type(model).__name__ == model_cls and type(model.visual.trunk).__name__ == trunk_cls
    assert (getattr(model, "logit_bias", None) is not None) == sigmoid

    zs = ZeroShotClassifier(loaded, CLASSES, templates=TEMPLATES).eval()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    # open_clip's own zero-shot head: its classifier weights, its normalisation, its logits
    weights = build_zero_shot_classifier(model, loaded.tokenizer, CLASSES, TEMPLATES, device="cpu")
    cfg = model.visual.preprocess_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = model.encode_image((images - mean) / std, normalize=True)
        expected = model.logit_scale.exp() * feats @ weights
        if sigmoid:
            expected = expected + model.logit_bias
        got = zs(images)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if sigmoid:  # the bias is in: without it the logits would differ by exactly -3.5
        unbiased = model.logit_scale.exp() * feats @ weights
        torch.testing.assert_close(got - unbiased, torch.full_like(got, -3.5))
    assert isinstance(model, open_clip.model.CLIP | open_clip.model.CustomTextCLIP)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_attacks_and_a_tecoa_training_step(name: str, tmp_path) -> None:
    loaded = _tiny(name)
    zs = ZeroShotClassifier(loaded, CLASSES).eval()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = zs(x)
        y = logits.argmax(1)  # correctly classified: APGD attacks only those
        clean = F.cross_entropy(logits, y)
    for attack in ("pgd", "apgd", "kl-pgd"):  # torchattacks, AutoAttack's APGD, clipx's own
        torch.manual_seed(0)
        adv = build_attack(attack, zs, eps="4/255", steps=3)(x, y).images  # eps-ball checked
        assert (adv - x).abs().max() <= 4 / 255 + 1e-6 and not torch.equal(adv, x), attack
        with torch.no_grad():
            adv_logits = zs(adv)
        if attack == "kl-pgd":  # label-free: it moves the prediction away from the clean one
            kl = F.kl_div(
                adv_logits.log_softmax(1),
                logits.log_softmax(1),
                reduction="batchmean",
                log_target=True,
            )
            assert kl > 1e-4, f"{attack}: KL {kl}"
        else:
            assert F.cross_entropy(adv_logits, y) > clean + 0.1, f"{attack} did not raise the loss"

    data = ProceduralShapes("train", n=8, seed=1)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    cfg = TrainConfig(max_steps=1, batch_size=8, lr=1e-2, optimizer="adamw")
    train(loaded, "tecoa", data, cfg, tmp_path, progress=False)
    after = loaded.model.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all(k.startswith("visual.") for k in moved), moved
    if FAMILIES[name][2]:  # a frozen sigmoid head keeps its scale and bias
        assert torch.equal(after["logit_bias"], before["logit_bias"])
        assert torch.equal(after["logit_scale"], before["logit_scale"])
