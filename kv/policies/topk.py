"""Top-k block attention, HiP-like (Lee et al.): every finished block of keys and values goes down to a
cold tier, and only a small representative per block stays hot (the mean of its keys after RoPE).
A query picks blocks hierarchically -- first the best groups of ``group`` consecutive blocks by their
mean representative, then the best ``k`` blocks inside them -- and attends over the sink blocks, the
chosen blocks, the recent blocks and the unfinished tail. The choice is refreshed every ``refresh``
steps; between refreshes the chosen blocks stay hot, and a refresh fetches only blocks it did not
hold. Nothing is thrown away: a block not chosen now may be chosen later. Positions stay the tokens'
own (keys are rotated at attention time, the representatives at their tokens' positions).
"""

from __future__ import annotations

import torch


def select_blocks(q: torch.Tensor, reps: torch.Tensor, candidates: list, k: int, group: int) -> list:
    """q (B, H, T, hd) after RoPE; reps (B, Hkv, N, hd) -> up to k of ``candidates`` (block ids),
    scored by the largest q.rep over batch, heads and queries, searched group first."""
    if k <= 0 or not candidates:
        return []
    B, H, T, hd = q.shape
    Hkv = reps.shape[1]
    qg = q.view(B, Hkv, H // Hkv, T, hd).transpose(2, 3).reshape(B, Hkv, T * (H // Hkv), hd)  # (B, Hkv, Q, hd)

    def score(r):  # r (B, Hkv, M, hd) -> (M,)
        return (qg @ r.transpose(-2, -1)).amax(dim=(0, 1, 2))  # (B, Hkv, Q, M) -> (M,)

    cand = torch.tensor(candidates, dtype=torch.long)
    if len(candidates) > k * group:  # coarse level: groups of consecutive candidates
        n_groups = -(-len(candidates) // group)
        gid = torch.arange(len(candidates)) // group
        grep = torch.zeros(B, Hkv, n_groups, hd, dtype=reps.dtype).index_add_(2, gid, reps[:, :, cand])
        grep = grep / torch.bincount(gid, minlength=n_groups).to(reps.dtype)[None, None, :, None]
        best = score(grep).topk(min(k, n_groups)).indices
        cand = cand[torch.isin(gid, best)]
    s = score(reps[:, :, cand])
    return sorted(cand[s.topk(min(k, len(cand))).indices].tolist())


class TopK:
    name = "topk"
    needs_scores = False
    reposition = False
    stores_all = True  # every block is kept (in the cold tier); the policy chooses what attention sees

    def __init__(self, k: int = 8, group: int = 4, refresh: int = 4, sinks: int = 1, recent: int = 2):
        if min(k, group, refresh) < 1 or sinks < 0 or recent < 0:
            raise ValueError(f"topk: k, group and refresh must be >= 1, sinks and recent >= 0 (blocks), got "
                             f"k={k}, group={group}, refresh={refresh}, sinks={sinks}, recent={recent}")
        self.k, self.group, self.refresh, self.sinks, self.recent = k, group, refresh, sinks, recent

    def fixed_blocks(self, chunk_blocks: int) -> int:
        """Blocks a layer holds hot besides the chosen ones: sinks, recent, tail and the new chunk."""
        return self.sinks + self.recent + 1 + chunk_blocks
