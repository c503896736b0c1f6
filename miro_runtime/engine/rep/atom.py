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
    """One matching, as the row each token lands in: kept A tokens first, then B tokens (each in
    original order), a merged A token in its B partner's row. Applying it is one scatter-add, so a
    merge costs a few passes over the tokens forward and backward (gathers and concatenations cost
    more than the tokens saved at small sizes)."""

    def __init__(self, src, keep, dst, T):
        self.src, self.keep, self.dst, self.T = src, keep, dst, T
        self.r = src.shape[1]
        B, Tk = keep.shape
        Ta, Tb = (T + 1) // 2, T // 2
        with torch.no_grad():
            rows_a = keep.new_empty(B, Ta)
            rows_a.scatter_(1, keep, torch.arange(Tk, device=keep.device).expand(B, Tk))
            rows_a.scatter_(1, src, Tk + dst)
            rows = keep.new_empty(B, T)
            rows[:, 0::2] = rows_a
            rows[:, 1::2] = Tk + torch.arange(Tb, device=keep.device)
        self.rows = rows  # (B, T): output row of each token

    def _rows(self, protect: int) -> torch.Tensor:
        if not protect:
            return self.rows
        B = self.rows.shape[0]
        head = torch.arange(protect, device=self.rows.device).expand(B, protect)
        return torch.cat([head, protect + self.rows], dim=1)  # (B, protect + T)

    @staticmethod
    def _scatter(x: torch.Tensor, rows: torch.Tensor, r: int) -> torch.Tensor:
        B, n, C = x.shape
        return x.new_zeros(B, n - r, C).scatter_add(1, rows[..., None].expand(B, n, C), x)

    def sum(self, x: torch.Tensor, protect: int = 0) -> torch.Tensor:
        """(B, protect + T, C) -> (B, protect + T - r, C): the first ``protect`` tokens stay where
        they are; merged tokens are summed into their partners."""
        return self._scatter(x, self._rows(protect), self.r)

    def weighted(self, x: torch.Tensor, size: torch.Tensor, protect: int = 0):
        """Size-weighted average: x (B, protect + T, C), size (B, protect + T, 1) patches per token ->
        (x', size') with size' summing to the same patch count; tokens that merge with nothing pass
        through exactly (x * s / s)."""
        rows = self._rows(protect)
        s = self._scatter(size, rows, self.r)  # (B, n - r, 1)
        return self._scatter(x * size, rows, self.r) / s, s


def merge_tokens(x: torch.Tensor, size: torch.Tensor, keys: torch.Tensor, r: int, protect: int = 1):
    """Merge r pairs among x[:, protect:] (the first ``protect`` tokens -- class token, prompts --
    pass through unchanged). x (B, T, D), size (B, T, 1), keys (B, T, C) -> (x', size', r applied)."""
    m = match(keys[:, protect:], r)
    if m is None:
        return x, size, 0
    x, size = m.weighted(x, size, protect)
    return x, size, m.r
