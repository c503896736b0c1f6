"""A frozen torchvision ViT run block by block, so prompts (L2P tokens, DualPrompt prefixes), AToM's
token merging and ALD's layer dropping can enter between its parts. The backbone's weights stay
torchvision's own (``VisionTransformer`` state dicts load as they are); only the forward is ours.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .atom import merge_tokens


@dataclass(frozen=True)
class ViTSpec:
    image_size: int
    patch_size: int
    hidden_dim: int
    num_layers: int
    num_heads: int
    mlp_dim: int

    @property
    def tokens(self) -> int:  # patch tokens (the class token not counted)
        return (self.image_size // self.patch_size) ** 2


# preset sizes: tiny/small/base are ViT-Ti/S/B's widths; micro is for boards and tests
SIZES = {
    "micro": dict(hidden_dim=64, num_layers=6, num_heads=2, mlp_dim=128),
    "mini": dict(hidden_dim=128, num_layers=12, num_heads=2, mlp_dim=512),
    "tiny": dict(hidden_dim=192, num_layers=12, num_heads=3, mlp_dim=768),
    "small": dict(hidden_dim=384, num_layers=12, num_heads=6, mlp_dim=1536),
    "base": dict(hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072),
}


def default_heads(dim: int) -> int:
    """A state dict does not record the head count; ViT-Ti/S/B/L all use 64 per head (tiny widths:
    32 per head). Saved backbones follow the same rule, so the count is recovered on load."""
    return max(1, dim // 64) if dim >= 128 else max(1, dim // 32)


def build(spec: ViTSpec, num_classes: int = 1) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer
    return VisionTransformer(spec.image_size, spec.patch_size, spec.num_layers, spec.num_heads, spec.hidden_dim,
                             spec.mlp_dim, num_classes=num_classes)


def spec_of(state: dict, heads=None, where: str = "backbone") -> ViTSpec:
    """Read the architecture off a torchvision ViT state dict (shapes only)."""
    need = ("conv_proj.weight", "encoder.pos_embedding", "class_token")
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(f"{where}: not a torchvision VisionTransformer state dict (no {', '.join(missing)})")
    w = state["conv_proj.weight"]  # (D, 3, p, p)
    if w.ndim != 4 or w.shape[1] != 3 or w.shape[2] != w.shape[3]:
        raise ValueError(f"{where}: conv_proj.weight has shape {list(w.shape)}, expected (D, 3, p, p)")
    d, p = int(w.shape[0]), int(w.shape[2])
    n = int(state["encoder.pos_embedding"].shape[1]) - 1
    side = int(round(math.sqrt(n)))
    if side * side != n:
        raise ValueError(f"{where}: encoder.pos_embedding holds {n} patch positions, not a square grid")
    layers = sorted({int(k.split(".")[2].rsplit("_", 1)[1]) for k in state if k.startswith("encoder.layers.")})
    if not layers or layers != list(range(len(layers))):
        raise ValueError(f"{where}: encoder layers are missing or not numbered 0..L-1")
    mlp = int(state["encoder.layers.encoder_layer_0.mlp.0.weight"].shape[0])
    h = heads or default_heads(d)
    if d % h:
        raise ValueError(f"{where}: width {d} is not divisible by {h} heads")
    return ViTSpec(side * p, p, d, len(layers), h, mlp)


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_backbone(path: str, heads=None, expect_dim=None) -> tuple:
    """A frozen ViT from a local state dict file (``weights_only=True``; no hub on devices).
    -> (module, spec, sha256). Shapes that do not fit say which tensor and why."""
    if not os.path.isfile(path):
        raise ValueError(f"backbone {path}: no such file (make one with `miro rep pretrain`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file, named as such
        raise ValueError(f"backbone {path}: not a loadable torch state dict ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"backbone {path}: holds {type(state).__name__}, not a state dict")
    spec = spec_of(state, heads, where=f"backbone {path}")
    if expect_dim is not None and spec.hidden_dim != expect_dim:
        raise ValueError(f"backbone {path}: width {spec.hidden_dim}, but this run's prompts and keys are "
                         f"{expect_dim} wide")
    vit = build(spec)
    state = {k: v for k, v in state.items() if not k.startswith("heads.")}  # the classifier is not used
    want = {k: v.shape for k, v in vit.state_dict().items() if not k.startswith("heads.")}
    for k, shape in want.items():
        if k not in state:
            raise ValueError(f"backbone {path}: tensor {k} is missing")
        if tuple(state[k].shape) != tuple(shape):
            raise ValueError(f"backbone {path}: tensor {k} has shape {list(state[k].shape)}, expected "
                             f"{list(shape)} for a ViT of {asdict(spec)}")
    extra = sorted(set(state) - set(want))
    if extra:
        raise ValueError(f"backbone {path}: unexpected tensors {extra[:3]}")
    vit.load_state_dict(state, strict=False)
    return freeze(vit), spec, file_digest(path)


def freeze(vit: nn.Module) -> nn.Module:
    vit.requires_grad_(False)
    vit.eval()
    vit.heads = nn.Identity()  # never run, never saved with the prompts
    return vit


def preprocess(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float (B, 3, S, S) in [-1, 1]; grey images repeat to three channels."""
    x = x.float().div(127.5).sub(1.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise ValueError(f"images with {x.shape[1]} channels: a ViT backbone takes 1 or 3")
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x


def embed(vit, img: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, 1 + N, D): class token + patch tokens, positions added."""
    x = vit._process_input(img)  # (B, N, D)
    cls = vit.class_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
    return torch.cat([cls, x], dim=1) + vit.encoder.pos_embedding


def attention(mha: nn.MultiheadAttention, h: torch.Tensor, log_size=None, prefix=None):
    """Multi-head self-attention from the block's own weights, with proportional attention (log of
    each token's size added to the logits) and DualPrompt's prefixes (extra keys and values).
    h (B, T, D); prefix (pk, pv) each (B, H, P, dh). -> (out (B, T, D), keys (B, T, dh) head-mean)."""
    B, T, D = h.shape
    H = mha.num_heads
    q, k, v = F.linear(h, mha.in_proj_weight, mha.in_proj_bias).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)
    keys = k.mean(dim=1)  # (B, T, dh): ToMe's similarity metric
    bias = None if log_size is None else log_size.view(B, 1, 1, T)  # (B, 1, 1, T)
    if prefix is not None:
        pk, pv = prefix  # (B, H, P, dh)
        k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)  # (B, H, P + T, dh)
        if bias is not None:
            bias = torch.cat([bias.new_zeros(B, 1, 1, pk.shape[2]), bias], dim=-1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, H, T, dh)
    return mha.out_proj(out.transpose(1, 2).reshape(B, T, D)), keys


def block(blk, x, size, protect: int, prefix=None, r: int = 0):
    """One encoder block: attention, then AToM with the class token and prompts (the first
    ``protect`` tokens) set aside, then the MLP. x (B, T, D), size (B, T, 1) or None (all ones).
    -> (x, size, tokens merged)."""
    h = blk.ln_1(x)
    a, keys = attention(blk.self_attention, h, None if size is None else size.log(), prefix)
    x = x + a
    merged = 0
    if r > 0:
        if size is None:
            size = x.new_ones(x.shape[0], x.shape[1], 1)
        x, size, merged = merge_tokens(x, size, keys, r, protect=protect)
    x = x + blk.mlp(blk.ln_2(x))
    return x, size, merged


@torch.no_grad()
def cls_feature(vit, img: torch.Tensor, layers=None) -> torch.Tensor:
    """The frozen backbone's [CLS] feature (B, D) with no prompts: L2P's query. ``layers``: run only
    the first so many blocks (a shallower query network)."""
    x = embed(vit, img)
    blocks = list(vit.encoder.layers)[:layers] if layers else vit.encoder.layers
    for blk in blocks:
        x, _, _ = block(blk, x, None, 1)
    return vit.encoder.ln(x)[:, 0]
