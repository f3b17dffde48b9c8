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


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al. 2018) as the LAAT reference's ResNet-12 schedules it: in training
    mode, drop `block` x `block` squares with seed rate gamma, where the keep rate ramps linearly
    from 1 to 1 - drop_rate over the first 40,000 forward passes (the reference counts every
    forward, attack steps included), and rescale the kept units. Identity in eval mode or at
    drop_rate 0."""

    RAMP = 20 * 2000

    def __init__(self, drop_rate: float = 0.0, block: int = 2):
        super().__init__()
        self.drop_rate, self.block = float(drop_rate), int(block)
        self.calls = 0

    def gamma(self, size: int) -> float:
        keep = max(1.0 - self.drop_rate / self.RAMP * self.calls, 1.0 - self.drop_rate)
        return (1 - keep) / self.block**2 * size**2 / (size - self.block + 1) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if not self.training or self.drop_rate <= 0 or x.shape[-1] < self.block:
            return x
        n, c, h, w = x.shape
        seeds = torch.bernoulli(
            torch.full(
                (n, c, h - self.block + 1, w - self.block + 1), self.gamma(h), device=x.device
            )
        )
        pad = self.block - 1
        blocks = F.max_pool2d(F.pad(seeds, (pad, pad, pad, pad)), self.block, stride=1)
        keep = 1 - blocks
        return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, drop: nn.Module | None = None):
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(c, cout, 3, padding=1, bias=False) for c in (cin, cout, cout)]
        )
        self.bns = nn.ModuleList([nn.BatchNorm2d(cout) for _ in range(3)])
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.drop = drop or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            out = bn(conv(out))
            if i < 2:
                out = self.act(out)
        return self.drop(self.pool(self.act(out + self.down(x))))


class ResNet12(nn.Module):
    """ResNet-12 (4 residual blocks of 3 convs, LeakyReLU 0.1, max-pool), global average pooling.

    drop_rate > 0 adds the reference's regularisers: dropout after the first two blocks and
    DropBlock (block `dropblock_size`: 2 for CIFAR-FS, 5 for miniImageNet) after the last two.
    Its train.py passes --drop_rate (default 0 = none of them)."""

    def __init__(
        self,
        channels: tuple[int, ...] = (64, 128, 256, 512),
        drop_rate: float = 0.0,
        dropblock_size: int = 2,
    ):
        super().__init__()
        dims = (3, *channels)
        half = len(channels) // 2

        def drop(i: int) -> nn.Module | None:
            if drop_rate <= 0:
                return None
            return nn.Dropout(drop_rate) if i < half else DropBlock(drop_rate, dropblock_size)

        self.layers = nn.Sequential(
            *[ResBlock(dims[i], dims[i + 1], drop(i)) for i in range(len(channels))]
        )
        self.out_dim = channels[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(2).mean(2)


BACKBONES = ("conv4", "conv4-512", "resnet12", "resnet12-640")


def build_backbone(
    name: str, width: int | None = None, drop_rate: float = 0.0, dropblock_size: int = 2
) -> nn.Module:
    """'conv4' (64 ch), 'conv4-512', 'resnet12' (64-128-256-512; `width` scales the ladder),
    'resnet12-640' (64-160-320-640: the ResNet12_embedding the reference's train.py builds; its
    64-128-256-512 models/resnet12.py is unused there). drop_rate / dropblock_size: ResNet-12's
    dropout + DropBlock (see ResNet12)."""
    if not 0.0 <= float(drop_rate) < 1.0:
        raise ClipxUsageError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
    if drop_rate and not name.startswith("resnet12"):
        raise ClipxUsageError(f"drop_rate applies to ResNet-12 backbones only, not '{name}'")
    if name == "conv4":
        return Conv4(width or 64)
    if name == "conv4-512":
        return Conv4(width or 512)
    if name == "resnet12":
        w = width or 64
        return ResNet12((w, 2 * w, 4 * w, 8 * w), drop_rate, dropblock_size)
    if name == "resnet12-640":
        if width is not None:
            raise ClipxUsageError(
                "backbone 'resnet12-640' has fixed widths; width applies to resnet12"
            )
        return ResNet12((64, 160, 320, 640), drop_rate, dropblock_size)
    raise ClipxUsageError(f"unknown backbone '{name}'; available: {', '.join(BACKBONES)}")


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
