"""Backbones with a class-incremental single head that grows as classes appear.

``SmallCNN`` for 8x8 and 28x28 inputs (and other small images); ``resnet18`` is torchvision's
ResNet-18 with a CIFAR stem (3x3 conv, no max-pool) for 32x32; ``efficientnet-lite0`` is the pretrained
edge backbone of efficientnet.py. Inputs are uint8 images scaled
and centred inside ``forward`` so the data path stays uint8 end to end.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .heads import GrowingHead


def to_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> roughly zero-mean floats. Uncentred [0, 1] inputs made the BN-free SmallCNN's
    first steps on a new task push its ReLUs dead in short (1-epoch) schedules: whole runs collapsed
    to one predicted class on some seeds; centred inputs do not."""
    return (x.float() - 127.5) / 63.75


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int = 1, width: int = 32, feat: int = 128):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),  # 8x8 and 28x28 inputs both end at 4x4
            nn.Flatten(), nn.Linear(2 * width * 16, feat), nn.ReLU())
        self.head = GrowingHead(feat)

    def forward(self, x):  # (B, C, H, W) uint8 -> (B, K)
        return self.head(self.features(to_input(x)))


class ResNet18(nn.Module):
    def __init__(self, in_channels: int = 3):
        super().__init__()
        import torchvision
        net = torchvision.models.resnet18(weights=None)
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)  # CIFAR stem: keep 32x32 resolution
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.features = net
        self.head = GrowingHead(512)

    def forward(self, x):  # (B, C, 32, 32) uint8 -> (B, K)
        return self.head(self.features(to_input(x)))


def make_model(name: str, shape, freeze: int | None = None, input_size: int = 0) -> nn.Module:
    """``freeze`` / ``input_size``: efficientnet-lite0's frozen blocks and input side (None / 0: its defaults)."""
    c, h, w = shape
    if name == "auto":
        name = "resnet18" if h >= 32 and c == 3 else "cnn"
    if name == "cnn":
        return SmallCNN(c)
    if name == "resnet18":
        return ResNet18(c)
    if name == "efficientnet-lite0":  # ImageNet weights from the installed package (the `edge` extra)
        from . import efficientnet as en
        return en.EfficientNetCL(en.FREEZE if freeze is None else freeze, input_size or en.SIZE, en.weights_file())
    raise ValueError(f"unknown model {name!r}; choose cnn, resnet18, efficientnet-lite0 or auto")
