"""``miro rep pretrain``: a small ViT trained from scratch on a stream's base classes, for devices
(and tests, and the benchmark) with no pretrained weights and no hub. Saves a plain torchvision
``VisionTransformer`` state dict, which ``--backbone`` then loads frozen.

``layer_drop`` trains with whole-layer dropping (LayerDrop, Fan et al.; stochastic depth's linear rule:
layer l of L is skipped with probability layer_drop * l / (L - 1), the first never): a backbone that has
seen layers go missing keeps its features when ALD drops layers under the prompts, as the large
pretrained ViTs REP starts from (trained with stochastic depth) do."""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from .vit import SIZES, ViTSpec, build, embed, file_digest, preprocess


def default_patch(image_size: int) -> int:
    """The divisor of the side closest to an eighth of it (2 at 16 px, 4 at 28 px: 7x7 patches): a patch
    must tile the image, and 28 // 8 = 3 does not."""
    divisors = [d for d in range(1, image_size + 1) if image_size % d == 0]
    return min(divisors, key=lambda d: (abs(d - image_size / 8), d))


def pretrain(stream, out: str, size: str = "micro", image_size: int = 0, patch_size: int = 0, epochs: int = 30,
             batch_size: int = 64, lr: float = 5e-4, seed: int = 0, threads: int = 0, layer_drop: float = 0.0,
             log=None) -> dict:
    if size not in SIZES:
        raise ValueError(f"--size {size!r}: choose one of {', '.join(SIZES)}")
    h = stream.shape[1]
    image_size = image_size or max(16, h)
    patch_size = patch_size or default_patch(image_size)
    if image_size % patch_size:
        raise ValueError(f"--image-size {image_size} is not a multiple of --patch-size {patch_size}")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("--epochs and --batch-size must be >= 1 and --lr > 0")
    if not 0.0 <= layer_drop < 1.0:
        raise ValueError(f"--layer-drop {layer_drop}: must lie in [0, 1)")
    spec = ViTSpec(image_size, patch_size, **SIZES[size])
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    vit = build(spec, num_classes=stream.num_classes)  # torchvision's own head layout (heads.head)
    x = np.concatenate([a for a, _ in stream.train])
    y = np.concatenate([b for _, b in stream.train])
    xt = np.concatenate([a for a, _ in stream.test])
    yt = np.concatenate([b for _, b in stream.test])
    opt = torch.optim.AdamW(vit.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(y) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    for e in range(epochs):
        vit.train()
        perm = torch.from_numpy(rng.permutation(len(y)))
        tot = 0.0
        for i in range(0, len(y), batch_size):
            idx = perm[i:i + batch_size]
            img = preprocess(_shift(X[idx], rng), spec.image_size)  # (B, 3, S, S)
            logits = _forward_dropping(vit, img, layer_drop, rng) if layer_drop else vit(img)
            loss = F.cross_entropy(logits, Y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vit.parameters(), 1.0)
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        if log:
            log(f"epoch {e + 1}/{epochs}: loss {tot / len(y):.3f}")
    acc = _accuracy(vit, xt, yt, spec.image_size)
    tmp = f"{out}.tmp.{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    torch.save(vit.state_dict(), tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, out)  # a kill mid-save leaves the old file or none, never half of one
    return {"out": os.path.abspath(out), "sha256": file_digest(out), "spec": spec.__dict__, "size": size,
            "classes": stream.info.get("class_order"), "train_samples": int(len(y)), "test_acc": acc,
            "epochs": epochs, "layer_drop": layer_drop, "seconds": time.perf_counter() - t0, "seed": seed}


def _forward_dropping(vit, img: torch.Tensor, p_max: float, rng) -> torch.Tensor:
    """torchvision's forward with whole layers skipped for this batch (LayerDrop, linear rule)."""
    x = embed(vit, img)  # (B, 1 + N, D)
    layers = vit.encoder.layers
    L = len(layers)
    for i, blk in enumerate(layers):
        if i and rng.random() < p_max * i / max(L - 1, 1):
            continue
        x = blk(x)  # torchvision's EncoderBlock, unchanged
    return vit.heads(vit.encoder.ln(x)[:, 0])  # (B, K)


def _shift(x: torch.Tensor, rng) -> torch.Tensor:
    """Random translations of up to an eighth of the image: the only augmentation, cheap and label-safe."""
    s = max(1, x.shape[-1] // 8)
    dx, dy = (int(v) for v in rng.integers(-s, s + 1, size=2))
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


@torch.no_grad()
def _accuracy(vit, x, y, image_size) -> float:
    vit.eval()
    right = 0
    for i in range(0, len(y), 256):
        out = vit(preprocess(torch.from_numpy(x[i:i + 256]), image_size))
        right += int((out.argmax(1).numpy() == y[i:i + 256]).sum())
    return right / max(len(y), 1)
