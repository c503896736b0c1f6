"""Top-k block attention with a bounded fast-memory bank, after HiP (Lee et al., arXiv 2406.09827): every
finished block of keys and values goes down to a cold tier; a query finds its top-k blocks by a tree
search over key bounds, and a bank of at most ``slots`` blocks (least recently used out first) holds the
blocks it chose lately, so hot residency does not grow with the context. A block's bound is the per-channel
max and min of its keys after RoPE (Quest's bound on any of its keys' score); a node of the tree bounds
``group`` consecutive nodes of the level below (max of maxes, min of mins: still a bound). Finished nodes
go to the cold tier; only the nodes of each level not yet under a finished parent stay hot (fewer than
``group`` per level), so what stays hot is O(log T) in the number of blocks. The search starts from the
few top nodes that cover the candidates, keeps the best ``beam`` nodes at each level above the blocks
(default k x group: a block whose parent's bound ranks just below the k-th is still reached) and the
best k blocks at the bottom (~log_group(T / k) levels of beam x group bounds fetched). Attention sees
the sink blocks, the chosen blocks, the recent blocks and the unfinished tail; in decoding the choice is
refreshed every ``refresh`` steps. Nothing is thrown away: a block not chosen now may be chosen later.
Positions stay the tokens' own.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from .base import Policy


def _score(qg: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """qg (B, Hkv, Q, hd); r (B, Hkv, M, 2, hd) bounds -> (Hkv, M): per KV head and node the largest upper
    bound of q.k over batch and the queries of the head's group (per channel the larger of q*max and q*min)."""
    # max >= min per channel, so the larger product is q*max where q >= 0 and q*min where q < 0: two
    # matmuls instead of a (B, Hkv, Q, M, hd) temporary (hundreds of MB for a 200-query prefill chunk)
    up = qg.clamp(min=0) @ r[:, :, :, 0, :].transpose(-1, -2) + qg.clamp(max=0) @ r[:, :, :, 1, :].transpose(-1, -2)
    return up.amax(dim=(0, 2))  # (B, Hkv, Q, M) -> (Hkv, M)


def _pick(s: torch.Tensor, n: int) -> list:
    """s (Hkv, M) scores -> up to n distinct node indices, taking each KV head's next best in turn. HiP and
    Quest choose per head; attention here sees one set of blocks per layer, so every head gets its share
    of it: ranked by the largest bound over all heads, a head whose keys run large would choose for all,
    and a retrieval head's block could rank below every block of a head that never reads them."""
    order = s.argsort(dim=1, descending=True).tolist()  # per head, best first
    out, seen = [], set()
    for r in range(s.shape[1]):
        for head in order:
            if len(out) == n:
                return out
            if head[r] not in seen:
                seen.add(head[r])
                out.append(head[r])
    return out


def _merge(reps: list) -> torch.Tensor:
    """Bounds (B, Hkv, 2, hd) each -> the bound of their union."""
    r = torch.stack(reps, dim=2)  # (B, Hkv, n, 2, hd)
    return torch.stack([r[..., 0, :].amax(dim=2), r[..., 1, :].amin(dim=2)], dim=2)


class BoundTree:
    """One layer's key bounds, as a tree of ``group``-ary nodes over its blocks. ``add`` a finished block's
    bound -> the (key, bytes) of the nodes it finished, for the caller to write to its cold tier; ``search``
    reads the finished nodes it needs back with ``get`` (a list of keys -> a list of bytes or None)."""

    def __init__(self, group: int, key: Callable[[int, int], str], get: Callable[[list], list]):
        if group < 2:
            raise ValueError(f"topk: group must be >= 2 (a tree of bounds), got {group}")
        self.g, self.key, self.get = group, key, get
        self.count: list = []  # finished nodes per level
        self.pend: list = []  # per level: finished nodes not yet under a finished parent (hot, < group)
        self.shape: Optional[tuple] = None  # (B, Hkv, 2, hd), dtype
        self.fetched = 0  # bounds read back from the cold tier

    @property
    def blocks(self) -> int:
        return self.count[0] if self.count else 0

    def add(self, rep: torch.Tensor) -> list:
        if self.shape is None:
            self.shape = (tuple(rep.shape), rep.dtype)
        out, level = [], 0
        while True:
            if len(self.count) == level:
                self.count.append(0)
                self.pend.append([])
            out.append((self.key(level, self.count[level]), rep.contiguous().cpu().numpy().tobytes()))
            self.count[level] += 1
            self.pend[level].append(rep)
            if len(self.pend[level]) < self.g:
                return out
            rep, self.pend[level] = _merge(self.pend[level]), []  # a finished parent, one level up
            level += 1

    def _open(self, level: int) -> Optional[torch.Tensor]:
        """The unfinished node of ``level`` >= 1 (its children: the hot finished ones and the one below)."""
        kids = list(self.pend[level - 1]) if level - 1 < len(self.pend) else []
        if level >= 2:
            below = self._open(level - 1)
            if below is not None:
                kids.append(below)
        return _merge(kids) if kids else None

    def nodes(self, level: int, ids: list) -> torch.Tensor:
        """Bounds of nodes ``ids`` of ``level`` -> (B, Hkv, len(ids), 2, hd)."""
        (shape, dtype) = self.shape
        done = self.count[level] if level < len(self.count) else 0
        hot_from = done - (len(self.pend[level]) if level < len(self.pend) else 0)
        cold = [j for j in ids if j < hot_from]
        got = {}
        if cold:
            for j, buf in zip(cold, self.get([self.key(level, j) for j in cold])):
                if buf is None:
                    raise KeyError(f"KV key bound {self.key(level, j)} is missing from the cold tier")
                got[j] = torch.from_numpy(np.frombuffer(bytes(buf), dtype=str(dtype).replace("torch.", ""))
                                          .reshape(shape).copy())
            self.fetched += len(cold)
        out = []
        for j in ids:
            if j in got:
                out.append(got[j])
            elif j < done:
                out.append(self.pend[level][j - hot_from])
            else:
                out.append(self._open(level))
        return torch.stack(out, dim=2)

    def within(self, level: int, ids: list, lo: int, hi: int) -> torch.Tensor:
        """Like ``nodes``, but each node bounds only its blocks in [lo, hi): a node that straddles an edge
        is merged from its children inside (one such node per edge and level), so a sink block's large keys
        or a recent block's do not draw the search towards blocks it cannot choose."""
        w, N = self.g ** level, self.blocks
        edge = [j for j in ids if j * w < lo or min((j + 1) * w, N) > hi]
        if not edge:
            return self.nodes(level, ids)
        inner = [j for j in ids if j not in edge]
        got = dict(zip(inner, self.nodes(level, inner).unbind(2))) if inner else {}
        for j in edge:
            kids = [c for c in range(j * self.g, (j + 1) * self.g) if c * (w // self.g) < hi
                    and (c + 1) * (w // self.g) > lo]
            got[j] = _merge(list(self.within(level - 1, kids, lo, hi).unbind(2)))
        return torch.stack([got[j] for j in ids], dim=2)

    def search(self, q: torch.Tensor, lo: int, hi: int, k: int, beam: Optional[int] = None) -> list:
        """q (B, H, T, hd) after RoPE -> up to k block ids in [lo, hi) with the highest bounds, searched
        level by level from the top nodes that cover [lo, hi), keeping the best ``beam`` (default k) nodes at
        each level above the blocks and the best k blocks."""
        if k <= 0 or hi <= lo:
            return []
        B, H, T, hd = q.shape
        Hkv = self.shape[0][1]
        qg = q.view(B, Hkv, H // Hkv, T, hd).transpose(2, 3).reshape(B, Hkv, T * (H // Hkv), hd)  # (B, Hkv, Q, hd)
        g = self.g

        def span(level, a, b):  # nodes of ``level`` that cover blocks in [a, b)
            w = g ** level
            return list(range(a // w, -(-b // w)))

        width = max(k, beam or k)
        level = 0  # start where few nodes cover [lo, hi)
        while len(span(level, lo, hi)) > width * g:
            level += 1
        nodes = span(level, lo, hi)
        while True:
            s = _score(qg, self.within(level, nodes, lo, hi))
            best = [nodes[i] for i in _pick(s, min(k if level == 0 else width, len(nodes)))]
            if level == 0:
                return sorted(best)
            w = g ** (level - 1)
            nodes = [c for b in sorted(best) for c in range(b * g, (b + 1) * g) if c * w < hi and (c + 1) * w > lo]
            level -= 1

    def hot_nodes(self) -> int:
        return sum(len(p) for p in self.pend)

    def hot_bytes(self) -> int:
        return sum(r.numel() * r.element_size() for p in self.pend for r in p)

    def keys(self) -> list:
        return [self.key(level, j) for level, n in enumerate(self.count) for j in range(n)]


def select_blocks(q: torch.Tensor, reps: torch.Tensor, lo: int, hi: int, k: int, group: int,
                  beam: Optional[int] = None) -> list:
    """The tree search over in-memory block bounds ``reps`` (B, Hkv, N, 2, hd): up to k blocks of [lo, hi)."""
    store: dict = {}
    tree = BoundTree(group, lambda level, j: f"{level}/{j}", lambda keys: [store.get(k) for k in keys])
    for b in range(reps.shape[2]):
        store.update(tree.add(reps[:, :, b]))
    return tree.search(q, lo, hi, k, beam)


class TopK(Policy):
    name = "topk"
    needs_scores = False
    reposition = False
    stores_all = True  # every block is kept (in the cold tier); the policy chooses what attention sees

    def __init__(self, k: int = 0, group: int = 4, refresh: int = 4, sinks: int = 1, recent: int = 2,
                 slots: int = 0, beam: int = 0):
        if min(k, slots, beam, sinks, recent) < 0 or refresh < 1 or group < 2 or (k and slots and slots < k):
            raise ValueError(f"topk: refresh must be >= 1, group >= 2, k, slots, sinks, recent and beam >= 0 "
                             f"(blocks; k, slots, beam 0: sized by the budget) and slots >= k, got k={k}, "
                             f"group={group}, refresh={refresh}, sinks={sinks}, recent={recent}, slots={slots}, "
                             f"beam={beam}")
        self.k, self.group, self.refresh, self.sinks, self.recent = k, group, refresh, sinks, recent
        # 0 = as many blocks as the layer's share of the hot budget leaves room for beside its sinks, recent
        # blocks, tail and hot bounds (a budget is there to be used: a fixed k under a large budget leaves
        # most of it idle and attention reads less than it could)
        self.beam = beam  # nodes kept per level above the blocks (0: k x group)
        self.slots = slots  # the bank: blocks held hot beside the sinks and recent ones, least recently used out

    def sized(self, room: int) -> tuple:
        """(k, slots, beam) for a layer with ``room`` blocks of its budget free."""
        slots = min(self.slots or room, room)
        k = min(self.k or slots, slots)
        return k, slots, self.beam or k * self.group
