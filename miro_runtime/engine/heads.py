"""Class-incremental single heads: outputs grow as classes appear, old rows keep their weights."""

from __future__ import annotations

import torch
import torch.nn as nn


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
