"""Swift prompt selection (REP): the prompt query comes from a much smaller frozen ViT instead of the
big backbone, mapped to the key width by a fixed random projection drawn from a seed (kept in the
checkpoint with the prompts). The base methods' query -- a whole forward of the frozen backbone --
is ``BackboneQuery``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .vit import cls_feature


class BackboneQuery(nn.Module):
    """L2P/DualPrompt's query: the frozen backbone's [CLS] feature, one prompt-free forward."""

    def __init__(self, vit, image_size: int):
        super().__init__()
        self.vit = [vit]  # shared with the prompted model; not a submodule (not saved twice)
        self.image_size = image_size

    @torch.no_grad()
    def forward(self, img: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, D)
        return cls_feature(self.vit[0], img)


class SwiftQuery(nn.Module):
    """A small frozen ViT's [CLS] feature times a fixed seeded projection (d -> D).

    The small ViT is a separate backbone file, or -- when none is given -- the first ``layers`` blocks
    of the big backbone (a shallower network of the same width)."""

    def __init__(self, vit, image_size: int, out_dim: int, seed: int, layers=None, owned: bool = True):
        super().__init__()
        if owned:
            self.small = vit  # its own frozen weights (excluded from checkpoints by the model)
        else:
            self.small = None
            self._shared = [vit]
        self.layers, self.image_size = layers, image_size
        d = vit.hidden_dim
        g = torch.Generator().manual_seed(int(seed))
        # a Gaussian projection keeps cosine similarities (Johnson-Lindenstrauss): selection by
        # similarity survives the change of width
        self.register_buffer("projection", torch.randn(d, out_dim, generator=g) / d ** 0.5)  # (d, D)

    @property
    def net(self):
        return self.small if self.small is not None else self._shared[0]

    @torch.no_grad()
    def forward(self, img: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, D)
        if img.shape[-1] != self.image_size:
            img = torch.nn.functional.interpolate(img, size=(self.image_size,) * 2, mode="bilinear",
                                                  align_corners=False)
        return cls_feature(self.net, img, self.layers) @ self.projection  # (B, d) @ (d, D)

