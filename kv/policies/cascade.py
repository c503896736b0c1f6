"""Cascading KV (Willette et al., arXiv 2406.17808), with the paper's acceptance rule: after the first
``sinks`` tokens (kept forever) the budget is split into ``levels`` sub-caches, each a queue. Tokens enter
sub-cache 0 one per step; sub-cache i accepts only on every 2^i-th step (every sub-cache accepts until the
cache has been full once: it fills as a sliding window, as the authors' code does). On an accepting step a token
arriving at sub-cache i is appended, and when the sub-cache is full its oldest token is evicted and carried
on to sub-cache i+1 in the same step; on a non-accepting step the arriving token competes with sub-cache i's
newest token and the one with the higher score (an EMA of the attention it received, beta 0.9999 as in the
paper, maxed over the query heads of its KV group) keeps that place, the other is dropped. Tokens evicted
from the last sub-cache are dropped. Level i so keeps tokens about 2^i apart: old context thins out instead
of vanishing. As in the paper each KV head keeps its own cascade (its own tokens, chosen by the attention of
its own query heads): a head that retrieves keeps what it reads, whatever the other heads read. Every head
keeps the same number of tokens, so the budget and the positions (places in the cache, as in StreamingLLM)
are shared. State is per layer: the cache holds one copy per layer.
"""

from collections import deque

import torch

from .base import Policy


class _Lane:
    """One KV head's cascade: its sinks, its sub-caches and its clock."""

    def __init__(self, levels: int):
        self.sink_pos, self.sub = [], [deque() for _ in range(levels)]
        self.step = 0  # tokens that entered sub-cache 0: the clock the acceptance rule counts
        self.last = -1  # highest absolute position placed so far
        self.score = {}


class Cascade(Policy):
    name = "cascade"
    needs_scores = True
    reposition = True
    per_layer = True  # one instance per layer: it remembers where each token sits
    per_head = True  # each KV head its own cascade

    def __init__(self, sinks: int = 4, levels: int = 4, beta: float = 0.9999):
        if sinks < 0 or levels < 1 or not 0.0 <= beta < 1.0:
            raise ValueError(f"cascade: sinks >= 0, levels >= 1 and 0 <= beta < 1, got sinks={sinks}, "
                             f"levels={levels}, beta={beta}")
        self.sinks, self.levels, self.beta = sinks, levels, beta
        self.lanes = []  # one per KV head, made at the first keep
        self.sizes = [0] * levels

    def received(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, G, S) -> (Hkv, S): the most any query head of a KV group gave a token (the paper's
        reduction), averaged over the batch. A mean would dilute the one retrieval head that reads a token
        among heads that never do."""
        return probs.amax(dim=2).mean(dim=0)

    def accumulate(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """EMA of the attention each cached token receives (the new tokens start from 0)."""
        return self.beta * old + (1.0 - self.beta) * new

    def _size(self, n: int) -> None:
        slots = max(0, n - min(self.sinks, n))
        base = slots // self.levels
        self.sizes = [base + (slots - base * self.levels if i == 0 else 0) for i in range(self.levels)]

    def _arrive(self, lane: _Lane, level: int, p: int, step: int) -> None:
        """Token ``p`` arrives at sub-cache ``level`` of ``lane`` on ``step``."""
        if level == self.levels:
            return  # evicted from the last sub-cache: dropped
        q = lane.sub[level]
        # an accepting step, nothing to compete with, or the first fill: until the cache has been full once
        # every sub-cache accepts (the authors' kernel does so), so it starts as a sliding window and the
        # older sub-caches thin out contiguous old context slowly instead of receiving it already thinned
        if step % (1 << level) == 0 or not q or step < sum(self.sizes):
            q.append(p)
            while len(q) > self.sizes[level]:
                self._arrive(lane, level + 1, q.popleft(), step)
        elif lane.score.get(p, 0.0) > lane.score.get(q[-1], 0.0):  # a tie keeps the resident
            q[-1] = p  # p is older than every token of level-1 and newer than this level's: order holds

    def _keep_lane(self, lane: _Lane, pos: list, scores: list, n: int) -> list:
        lane.score = dict(zip(pos, scores))
        for p in pos:
            if p <= lane.last:
                continue
            lane.last = p
            if p < self.sinks:  # the first tokens of the sequence are the attention sinks
                lane.sink_pos.append(p)
            else:
                self._arrive(lane, 0, p, lane.step)
                lane.step += 1
        for level in range(self.levels):  # n may have shrunk (a larger chunk): evict down the levels
            q = lane.sub[level]
            while len(q) > self.sizes[level]:
                self._arrive(lane, level + 1, q.popleft(), lane.step)
        live = set(lane.sink_pos[:n])
        for q in lane.sub:
            live.update(q)
        lane.sink_pos = [p for p in lane.sink_pos if p in live]
        return [i for i, p in enumerate(pos) if p in live]

    def keep(self, abs_pos: torch.Tensor, scores: torch.Tensor, n: int) -> torch.Tensor:
        """Indices (sorted) of at most n tokens to keep, per KV head: abs_pos and scores (Hkv, S), each
        row ascending -> (Hkv, n'); a 1-D abs_pos (one head) gives 1-D indices."""
        one = abs_pos.dim() == 1
        pos = abs_pos.view(1, -1) if one else abs_pos
        sc = scores.reshape(pos.shape) if scores is not None else torch.zeros(pos.shape)
        if not self.lanes:
            self.lanes = [_Lane(self.levels) for _ in range(pos.shape[0])]
        self._size(n)
        rows = [self._keep_lane(lane, p, s, n) for lane, p, s in zip(self.lanes, pos.tolist(), sc.tolist())]
        # the acceptance rule depends on the clock and the sizes alone, never on scores: every lane keeps
        # the same number of tokens, so the heads' caches stay one rectangular tensor
        assert len({len(r) for r in rows}) == 1, [len(r) for r in rows]
        idx = torch.tensor(rows, dtype=torch.long)
        return idx[0] if one else idx
