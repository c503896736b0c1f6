"""AToM (REP, Jeon et al.): adaptive token merging. Layer l of L merges n'_l = min(delta*(l-1), r_max)
token pairs, delta = r_max/(L-1), so shallow layers merge nothing and deep layers the most, by ToMe's
bipartite soft matching on the attention keys; the class token and the prompts never merge.

Pure functions on tensors: the schedule, one matching, and the size-weighted merge it implies.
"""

from __future__ import annotations

import torch


def schedule(num_layers: int, r_max: int) -> list:
    """n'_l for l = 1..L (returned 0-based): min(floor(delta*(l-1)), r_max), delta = r_max/(L-1).
    Integer arithmetic, so the last layer gets exactly r_max."""
    if r_max < 0:
        raise ValueError(f"r_max must be >= 0, got {r_max}")
    if num_layers < 2:
        return [0] * num_layers
    return [min(r_max * i // (num_layers - 1), r_max) for i in range(num_layers)]


def match(keys: torch.Tensor, r: int):
    """Bipartite soft matching over the mergeable tokens (the caller has set the class token and the
    prompts aside). keys: (B, T, C) -- the attention keys, averaged over heads.

    Tokens alternate into sets A (even positions) and B (odd); each A token's most similar B token
    (cosine) is its edge; the r strongest edges merge. r is capped at |A| (half the tokens).
    Returns a ``Merge`` or None when nothing merges."""
    B, T, _ = keys.shape
    r = min(r, T // 2)
    if r <= 0:
        return None
    with torch.no_grad():  # the matching is a discrete choice: no gradient flows through it
        k = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        sim = k[:, 0::2] @ k[:, 1::2].transpose(1, 2)  # (B, Ta, Tb)
        best, partner = sim.max(dim=-1)  # (B, Ta) each
        order = best.argsort(dim=-1, descending=True)  # strongest edges first
        src = order[:, :r]  # (B, r): A tokens merged away
        keep = order[:, r:].sort(dim=-1).values  # (B, Ta - r): A tokens kept, original order
        dst = partner.gather(1, src)  # (B, r): the B token each merges into
    return Merge(src, keep, dst, T)


class Merge:
    """One matching applied to any per-token tensor of the same token axis (features, sizes)."""

    def __init__(self, src, keep, dst, T):
        self.src, self.keep, self.dst, self.T = src, keep, dst, T
        self.r = src.shape[1]

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T - r, C): merged A tokens are summed into their B partners; the kept A
        tokens come first, then B, each in original order."""
        B, _, C = x.shape
        a, b = x[:, 0::2], x[:, 1::2]  # (B, Ta, C), (B, Tb, C)
        kept = a.gather(1, self.keep[..., None].expand(B, self.keep.shape[1], C))
        moved = a.gather(1, self.src[..., None].expand(B, self.r, C))  # (B, r, C)
        b = b.scatter_add(1, self.dst[..., None].expand(B, self.r, C), moved)
        return torch.cat([kept, b], dim=1)

    def weighted(self, x: torch.Tensor, size: torch.Tensor):
        """Size-weighted average: x (B, T, C), size (B, T, 1) patches per token ->
        (x', size') with size' summing to the same patch count. One gather/scatter pass carries the
        weighted features and the sizes together (size as an extra channel)."""
        both = self.sum(torch.cat([x * size, size], dim=-1))  # (B, T - r, C + 1)
        s = both[..., -1:]
        return both[..., :-1] / s, s


def merge_tokens(x: torch.Tensor, size: torch.Tensor, keys: torch.Tensor, r: int, protect: int = 1):
    """Merge r pairs among x[:, protect:] (the first ``protect`` tokens -- class token, prompts --
    pass through unchanged). x (B, T, D), size (B, T, 1), keys (B, T, C) -> (x', size', r applied)."""
    head_x, rest_x = x[:, :protect], x[:, protect:]
    head_s, rest_s = size[:, :protect], size[:, protect:]
    m = match(keys[:, protect:], r)
    if m is None:
        return x, size, 0
    rest_x, rest_s = m.weighted(rest_x, rest_s)
    return torch.cat([head_x, rest_x], dim=1), torch.cat([head_s, rest_s], dim=1), m.r
