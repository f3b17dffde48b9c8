"""Small image backbones trained from scratch (paper mode) and the anchor-head model.

`AnchorNet` is a plain logits model on [0, 1] images: logits = cos(h(x), anchors) / tau, with the
pixel normalisation inside, so torchattacks and AutoAttack attack it as is. The anchors are a
buffer swapped per evaluation (seen classes for training, novel classes for zero-shot tests),
like the reference's train_head / test_head sharing one backbone."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from clip_robust_ext.api import ClipxUsageError

# CIFAR-100 statistics used by the reference for CIFAR-FS
CIFAR_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
CIFAR_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, pool: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
        if pool:
            layers.append(nn.MaxPool2d(2))
        super().__init__(*layers)
        conv, bn = layers[0], layers[1]
        n = (
            conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
        )  # reference's fan-out init
        conv.weight.data.normal_(0, math.sqrt(2.0 / n))
        bn.weight.data.fill_(1)
        bn.bias.data.zero_()


class Conv4(nn.Module):
    """Conv4 with global average pooling ('Conv4-512' in the reference when channels = 512)."""

    def __init__(self, channels: int = 64, depth: int = 4):
        super().__init__()
        self.trunk = nn.Sequential(
            *[ConvBlock(3 if i == 0 else channels, channels, pool=i < 4) for i in range(depth)]
        )
        self.out_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).flatten(2).mean(2)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(c, cout, 3, padding=1, bias=False) for c in (cin, cout, cout)]
        )
        self.bns = nn.ModuleList([nn.BatchNorm2d(cout) for _ in range(3)])
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            out = bn(conv(out))
            if i < 2:
                out = self.act(out)
        return self.pool(self.act(out + self.down(x)))


class ResNet12(nn.Module):
    """ResNet-12 (4 residual blocks of 3 convs, LeakyReLU 0.1, max-pool), global average pooling;
    the reference's DropBlock is omitted (its drop_rate defaults to 0)."""

    def __init__(self, channels: tuple[int, ...] = (64, 128, 256, 512)):
        super().__init__()
        dims = (3, *channels)
        self.layers = nn.Sequential(*[ResBlock(dims[i], dims[i + 1]) for i in range(len(channels))])
        self.out_dim = channels[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(2).mean(2)


def build_backbone(name: str, width: int | None = None) -> nn.Module:
    """'conv4' (64 ch), 'conv4-512', 'resnet12' (64-128-256-512); `width` overrides conv4 channels
    or scales the ResNet-12 channel ladder (width = first stage)."""
    if name == "conv4":
        return Conv4(width or 64)
    if name == "conv4-512":
        return Conv4(width or 512)
    if name == "resnet12":
        w = width or 64
        return ResNet12((w, 2 * w, 4 * w, 8 * w))
    raise ClipxUsageError(f"unknown backbone '{name}'; available: conv4, conv4-512, resnet12")


class AnchorNet(nn.Module):
    """normalise -> backbone -> (bias-free Linear to the anchor dim) -> cos(., anchors) / tau."""

    def __init__(
        self,
        backbone: nn.Module,
        anchors: torch.Tensor,
        tau: float = 1.0,
        mean: tuple[float, ...] = CIFAR_MEAN,
        std: tuple[float, ...] = CIFAR_STD,
        use_linear: bool | None = None,
    ):
        super().__init__()
        if tau <= 0:
            raise ClipxUsageError(f"tau must be > 0, got {tau}")
        dim = anchors.shape[1]
        if use_linear is None:
            use_linear = backbone.out_dim != dim
        if not use_linear and backbone.out_dim != dim:
            raise ClipxUsageError(
                f"backbone gives {backbone.out_dim}-d features, anchors are {dim}-d: set use_linear"
            )
        self.backbone = backbone
        self.proj = nn.Linear(backbone.out_dim, dim, bias=False) if use_linear else nn.Identity()
        self.tau = float(tau)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("anchors", F.normalize(anchors.float(), dim=-1).clone())

    def set_anchors(self, anchors: torch.Tensor) -> None:
        """Swap the head (e.g. seen -> novel classes); the anchors are never trained."""
        if anchors.shape[1] != self.anchors.shape[1]:
            raise ClipxUsageError(f"anchor dim {anchors.shape[1]} != {self.anchors.shape[1]}")
        self.anchors = F.normalize(anchors.float(), dim=-1).to(self.mean.device).clone()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """h(x): the embedding compared with the anchors (not normalised)."""
        return self.proj(self.backbone((images - self.mean) / self.std))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(images), dim=-1) @ self.anchors.T / self.tau
