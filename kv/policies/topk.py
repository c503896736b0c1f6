"""Top-k block attention, HiP-like (Lee et al.): every finished block of keys and values goes down to a
cold tier, and only a small representative per block stays hot: the per-channel max and min of its
keys after RoPE, which bound any of its keys' score against a query (Quest's bound). A query picks
blocks hierarchically -- first the best groups of ``group`` consecutive blocks, then the best ``k``
blocks inside them -- and attends over the sink blocks, the chosen blocks, the recent blocks and the
unfinished tail. Every prefill chunk chooses for its own queries; in decoding the choice is refreshed
every ``refresh`` steps, and between refreshes the chosen blocks stay hot; a refresh fetches only
blocks it did not hold. Nothing is thrown away: a block not chosen now may be chosen later.
Positions stay the tokens' own. The representatives cost 1/``block`` of the KV and stay hot, which
bounds the context a hot budget can serve.
"""

from __future__ import annotations

import torch

from .base import Policy


def select_blocks(q: torch.Tensor, reps: torch.Tensor, candidates: list, k: int, group: int) -> list:
    """q (B, H, T, hd) after RoPE; reps (B, Hkv, N, 2, hd): each block's per-channel max and min of its
    rotated keys -> up to k of ``candidates`` (block ids). A block's score is an upper bound of any of
    its keys' q.k (per channel, the larger of q*max and q*min; Quest's bound), maxed over batch, heads
    and queries; groups of ``group`` consecutive blocks (max of maxes, min of mins: still a bound) are
    searched first."""
    if k <= 0 or not candidates:
        return []
    B, H, T, hd = q.shape
    Hkv = reps.shape[1]
    qg = q.view(B, Hkv, H // Hkv, T, hd).transpose(2, 3).reshape(B, Hkv, T * (H // Hkv), hd)  # (B, Hkv, Q, hd)

    def score(r):  # r (B, Hkv, M, 2, hd) -> (M,)
        hi = qg[:, :, :, None, :] * r[:, :, None, :, 0, :]  # (B, Hkv, Q, M, hd)
        lo = qg[:, :, :, None, :] * r[:, :, None, :, 1, :]
        return torch.maximum(hi, lo).sum(-1).amax(dim=(0, 1, 2))  # (M,)

    cand = torch.tensor(candidates, dtype=torch.long)
    if len(candidates) > k * group:  # coarse level: groups of consecutive candidates
        n_groups = -(-len(candidates) // group)
        r = reps[:, :, cand]  # (B, Hkv, C, 2, hd)
        pad = n_groups * group - len(candidates)
        if pad:  # pad by repeating the last block: it changes no group's max or min
            r = torch.cat([r, r[:, :, -1:].expand(B, Hkv, pad, 2, hd)], dim=2)
        r = r.view(B, Hkv, n_groups, group, 2, hd)
        grep = torch.stack([r[..., 0, :].amax(dim=3), r[..., 1, :].amin(dim=3)], dim=3)  # (B, Hkv, G, 2, hd)
        best = score(grep).topk(min(k, n_groups)).indices
        cand = cand[torch.isin(torch.arange(len(candidates)) // group, best)]
    s = score(reps[:, :, cand])
    return sorted(cand[s.topk(min(k, len(cand))).indices].tolist())


class TopK(Policy):
    name = "topk"
    needs_scores = False
    reposition = False
    stores_all = True  # every block is kept (in the cold tier); the policy chooses what attention sees

    def __init__(self, k: int = 8, group: int = 4, refresh: int = 4, sinks: int = 1, recent: int = 2):
        if min(k, group, refresh) < 1 or sinks < 0 or recent < 0:
            raise ValueError(f"topk: k, group and refresh must be >= 1, sinks and recent >= 0 (blocks), got "
                             f"k={k}, group={group}, refresh={refresh}, sinks={sinks}, recent={recent}")
        self.k, self.group, self.refresh, self.sinks, self.recent = k, group, refresh, sinks, recent
