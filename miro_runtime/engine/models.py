"""Backbones with a class-incremental single head that grows as classes appear.

``SmallCNN`` for 8x8 and 28x28 inputs (and other small images); ``resnet18`` is torchvision's
ResNet-18 with a CIFAR stem (3x3 conv, no max-pool) for 32x32. Inputs are uint8 images scaled
and centred inside ``forward`` so the data path stays uint8 end to end.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def to_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> roughly zero-mean floats. Uncentred [0, 1] inputs made the BN-free SmallCNN's
    first steps on a new task push its ReLUs dead in short (1-epoch) schedules: whole runs collapsed
    to one predicted class on some seeds; centred inputs do not."""
    return (x.float() - 127.5) / 63.75


class GrowingHead(nn.Module):
    """A linear head whose output grows; old rows keep their weights."""

    def __init__(self, in_features: int, num_classes: int = 0):
        super().__init__()
        self.in_features = in_features
        self.fc = nn.Linear(in_features, max(num_classes, 1))
        self.num_classes = num_classes

    def grow(self, num_classes: int) -> bool:
        if num_classes <= self.num_classes:
            return False
        old = self.fc
        self.fc = nn.Linear(self.in_features, num_classes).to(old.weight.device)
        with torch.no_grad():
            k = self.num_classes
            if k:
                self.fc.weight[:k] = old.weight[:k]
                self.fc.bias[:k] = old.bias[:k]
        self.num_classes = num_classes
        return True

    def forward(self, h):  # (B, F) -> (B, K)
        return self.fc(h)[:, : self.num_classes]


class CosineHead(GrowingHead):
    """Cosine-similarity logits times a fixed scale: old and new classes' weight norms cannot drift apart,
    the imbalance that a linear head trained one task at a time (with the others masked) builds up."""

    def __init__(self, in_features: int, num_classes: int = 0, scale: float = 16.0):
        super().__init__(in_features, num_classes)
        self.scale = scale

    def forward(self, h):  # (B, F) -> (B, K)
        w = nn.functional.normalize(self.fc.weight[: self.num_classes], dim=1)
        return self.scale * nn.functional.normalize(h, dim=1) @ w.t()


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


def make_model(name: str, shape) -> nn.Module:
    c, h, w = shape
    if name == "auto":
        name = "resnet18" if h >= 32 and c == 3 else "cnn"
    if name == "cnn":
        return SmallCNN(c)
    if name == "resnet18":
        return ResNet18(c)
    raise ValueError(f"unknown model {name!r}; choose cnn, resnet18 or auto")
