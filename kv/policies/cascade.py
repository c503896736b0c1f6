"""Cascading KV (Willette et al., arXiv 2406.17808), with the paper's acceptance rule: after the first
``sinks`` tokens (kept forever) the budget is split into ``levels`` sub-caches, each a queue. Tokens enter
sub-cache 0 one per step; sub-cache i accepts only on every 2^i-th step. On an accepting step a token
arriving at sub-cache i is appended, and when the sub-cache is full its oldest token is evicted and carried
on to sub-cache i+1 in the same step; on a non-accepting step the arriving token competes with sub-cache i's
newest token and the one with the higher score (an EMA of the attention it received, beta 0.9999 as in the
paper, maxed over the query heads) keeps that place, the other is dropped. Tokens evicted from the last
sub-cache are dropped. Level i so keeps tokens about 2^i apart: old context thins out instead of
vanishing. Positions are places in the cache, as in StreamingLLM. State is per layer: the cache holds one
copy per layer.
"""

from collections import deque

import torch

from .base import Policy


class Cascade(Policy):
    name = "cascade"
    needs_scores = True
    reposition = True
    per_layer = True  # one instance per layer: it remembers where each token sits

    def __init__(self, sinks: int = 4, levels: int = 4, beta: float = 0.9999):
        if sinks < 0 or levels < 1 or not 0.0 <= beta < 1.0:
            raise ValueError(f"cascade: sinks >= 0, levels >= 1 and 0 <= beta < 1, got sinks={sinks}, "
                             f"levels={levels}, beta={beta}")
        self.sinks, self.levels, self.beta = sinks, levels, beta
        self.sink_pos, self.sub = [], [deque() for _ in range(levels)]
        self.step = 0  # tokens that entered sub-cache 0: the clock the acceptance rule counts
        self.last = -1  # highest absolute position placed so far
        self.sizes = [0] * levels
        self._score = {}

    def received(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, H, S) -> (S,): the most any query head gave a token (the paper reduces a KV group's heads by
        max; one kept set serves all heads here, so the max runs over all of them), averaged over the batch.
        A mean would dilute the one retrieval head that reads a token among heads that never do."""
        return probs.amax(dim=1).mean(dim=0)

    def accumulate(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """EMA of the attention each cached token receives (the new tokens start from 0)."""
        return self.beta * old + (1.0 - self.beta) * new

    def _size(self, n: int) -> None:
        slots = max(0, n - min(self.sinks, n))
        base = slots // self.levels
        self.sizes = [base + (slots - base * self.levels if i == 0 else 0) for i in range(self.levels)]

    def _arrive(self, level: int, p: int, step: int) -> None:
        """Token ``p`` arrives at sub-cache ``level`` on ``step``."""
        if level == self.levels:
            return  # evicted from the last sub-cache: dropped
        q = self.sub[level]
        if step % (1 << level) == 0 or not q:  # an accepting step (or nothing to compete with)
            q.append(p)
            while len(q) > self.sizes[level]:
                self._arrive(level + 1, q.popleft(), step)
        elif self._score.get(p, 0.0) > self._score.get(q[-1], 0.0):  # a tie keeps the resident
            q[-1] = p  # p is older than every token of level-1 and newer than this level's: order holds

    def keep(self, abs_pos: torch.Tensor, scores: torch.Tensor, n: int) -> torch.Tensor:
        """Indices (sorted) of at most n tokens to keep among the cached ones (abs_pos ascending)."""
        pos = abs_pos.tolist()
        self._score = dict(zip(pos, scores.tolist())) if scores is not None else {}
        self._size(n)
        for p in pos:
            if p <= self.last:
                continue
            self.last = p
            if p < self.sinks:  # the first tokens of the sequence are the attention sinks
                self.sink_pos.append(p)
            else:
                self._arrive(0, p, self.step)
                self.step += 1
        for level in range(self.levels):  # n may have shrunk (a larger chunk): evict down the levels
            q = self.sub[level]
            while len(q) > self.sizes[level]:
                self._arrive(level + 1, q.popleft(), self.step)
        live = set(self.sink_pos[:n])
        for q in self.sub:
            live.update(q)
        keep = [i for i, p in enumerate(pos) if p in live]
        self.sink_pos = [p for p in self.sink_pos if p in live]
        return torch.tensor(keep, dtype=torch.long)
