"""Cascading KV (Willette et al.): the budget is split into sub-caches; sub-cache 0 takes every new
token, and sub-cache i takes one of every two tokens evicted from sub-cache i-1, so level i keeps
tokens about 2^i apart and old context thins out instead of vanishing. Between two arrivals a level
"carries" one candidate; when the next arrives the one with the higher EMA attention score (averaged
over query heads) enters and the other is dropped. The first ``sinks`` tokens are always kept, and
positions are places in the cache, as in StreamingLLM. State is per layer: the cache holds one copy
of this policy for each layer.
"""

from collections import deque

import torch

from .base import Policy


class Cascade(Policy):
    name = "cascade"
    needs_scores = True
    reposition = True
    per_layer = True  # one instance per layer: it remembers where each token sits

    def __init__(self, sinks: int = 4, levels: int = 4, beta: float = 0.9):
        if sinks < 0 or levels < 1 or not 0.0 <= beta < 1.0:
            raise ValueError(f"cascade: sinks >= 0, levels >= 1 and 0 <= beta < 1, got sinks={sinks}, "
                             f"levels={levels}, beta={beta}")
        self.sinks, self.levels, self.beta = sinks, levels, beta
        self.sink_pos, self.sub = [], [deque() for _ in range(levels)]
        self.carry = [None] * levels  # level i >= 1: the candidate waiting for its pair
        self.last = -1  # highest absolute position placed so far
        self.sizes = [0] * levels
        self._score = {}

    def accumulate(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """EMA of the attention each cached token receives (the new tokens start from 0)."""
        return self.beta * old + (1.0 - self.beta) * new

    def _size(self, n: int) -> None:
        slots = max(0, n - min(self.sinks, n) - (self.levels - 1))  # a carried token takes a slot too
        base = slots // self.levels
        self.sizes = [base + (slots - base * self.levels if i == 0 else 0) for i in range(self.levels)]

    def _push(self, level: int, p: int) -> None:
        if level == self.levels:
            return  # fell off the last level
        if level > 0:
            c = self.carry[level]
            if c is None:
                self.carry[level] = p
                return
            self.carry[level] = None  # the pair is complete: the more attended one enters
            p = c if self._score.get(c, 0.0) >= self._score.get(p, 0.0) else p
        q = self.sub[level]
        q.append(p)
        while len(q) > self.sizes[level]:
            self._push(level + 1, q.popleft())

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
                self._push(0, p)
        for level in range(self.levels):  # n may have shrunk (a larger chunk): re-balance
            q = self.sub[level]
            while len(q) > self.sizes[level]:
                self._push(level + 1, q.popleft())
        live = set(self.sink_pos[:n])
        for level in range(self.levels):
            live.update(self.sub[level])
            if self.carry[level] is not None:
                live.add(self.carry[level])
        while len(live) > n:  # only when n < sinks + levels: drop the least attended
            live.remove(min(live - set(self.sink_pos[:n]) or live, key=lambda p: self._score.get(p, 0.0)))
        keep = [i for i, p in enumerate(pos) if p in live]
        for level in range(self.levels):  # forget what the cache no longer holds
            if self.carry[level] is not None and self.carry[level] not in live:
                self.carry[level] = None
            self.sub[level] = deque(p for p in self.sub[level] if p in live)
        self.sink_pos = [p for p in self.sink_pos if p in live]
        return torch.tensor(keep, dtype=torch.long)
