"""Cascading KV (Willette et al., arXiv 2406.17808), the paper's acceptance rule: after the first ``sinks``
tokens (kept forever) the budget is split into ``levels`` sub-caches, each a queue. Tokens enter sub-cache 0
one per step; sub-cache i accepts only on every 2^i-th step (every sub-cache accepts until the cache has been
full once: it fills as a sliding window, as the authors' code does). On an accepting step a token arriving at
sub-cache i is appended, and when the sub-cache is full its oldest token is evicted and carried on to
sub-cache i+1 in the same step; on a non-accepting step the arriving token competes with sub-cache i's newest
token and the one with the higher score (an EMA of the attention it received, beta 0.9999 as in the paper)
keeps that place, the other is dropped. Tokens evicted from the last sub-cache are dropped. Level i so keeps
tokens about 2^i apart: old context thins out instead of vanishing.

Two departures by default, each measured on SmolLM2-135M (BENCHMARKS.md, KV section 5), each an option back to
the paper: ``span`` -- the rule moves runs of ``span`` consecutive tokens, not single tokens (a run scores the
mean of its tokens): thinned one token in two, a 5-digit key written a digit a token never survives whole in
an older sub-cache, while a run that holds it can; ``per_head`` -- the paper gives each KV head its own cascade
(tokens chosen by the attention of its own query heads, maxed over them); by default one cascade serves every
head (scored by the most any query head gave), so all heads read the same context. ``span=1,
per_head=true`` is the paper's rule. Positions are places in the cache, as in StreamingLLM. State is per layer:
the cache holds one copy per layer.
"""

from collections import deque

import torch

from .base import Policy


class _Lane:
    """One cascade (every head's, or one KV head's): its sinks, its sub-caches and its clock."""

    def __init__(self, levels: int):
        self.sink_pos, self.sub = [], [deque() for _ in range(levels)]
        self.step = 0  # runs that entered sub-cache 0: the clock the acceptance rule counts
        self.last = -1  # highest absolute position placed so far
        self.run = -1  # the newest run placed
        self.score = {}  # run -> its tokens' mean score


class Cascade(Policy):
    name = "cascade"
    needs_scores = True
    reposition = True
    per_layer = True  # one instance per layer: it remembers where each token sits

    def __init__(self, sinks: int = 4, levels: int = 4, beta: float = 0.9999, span: int = 8,
                 per_head: bool = False):
        if sinks < 0 or levels < 1 or not 0.0 <= beta < 1.0 or span < 1:
            raise ValueError(f"cascade: sinks >= 0, levels >= 1, 0 <= beta < 1 and span >= 1, got sinks={sinks}, "
                             f"levels={levels}, beta={beta}, span={span}")
        self.sinks, self.levels, self.beta, self.span = sinks, levels, beta, span
        self.per_head = bool(per_head)  # the cache reads it: (Hkv, S) positions and scores, one row a head
        self.run_len = None  # the span in use, fixed at the first eviction (shorter where the budget is tiny)
        self.lanes = []  # one cascade, or one per KV head, made at the first keep
        self.sizes = [0] * levels

    def received(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, G, S) -> (Hkv, S) per head: the most any query head of a KV group gave a token (the
        paper's reduction); (S,) shared: the most any query head gave it. Averaged over the batch. A mean
        over heads would dilute the one retrieval head that reads a token among heads that never do."""
        return probs.amax(dim=2).mean(dim=0) if self.per_head else probs.amax(dim=(1, 2)).mean(dim=0)

    def accumulate(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """EMA of the attention each cached token receives (the new tokens start from 0)."""
        return self.beta * old + (1.0 - self.beta) * new

    def _size(self, n: int) -> None:
        """Sub-cache sizes in runs for ``n`` tokens: an equal share each, the remainder to sub-cache 0; a
        budget of fewer runs than levels leaves the older sub-caches empty (a window of runs). The first call
        fixes the run length: ``span``, or less where the budget holds fewer than a run per sub-cache (down
        to single tokens), so a tiny budget works as the paper's token rule does."""
        slots = max(0, n - min(self.sinks, n))
        if self.run_len is None:
            self.run_len = max(1, min(self.span, slots // self.levels))
        runs = slots // self.run_len
        if runs < 1 and self.run_len > 1:
            raise ValueError(f"cascade: runs of {self.run_len} tokens need at least sinks + {self.run_len} = "
                             f"{self.sinks + self.run_len} tokens per layer, the cache keeps {n}; give a smaller "
                             "span or a larger hot budget")
        base = runs // self.levels
        self.sizes = [base + (runs - base * self.levels if i == 0 else 0) for i in range(self.levels)]

    def _arrive(self, lane: _Lane, level: int, p: int, step: int) -> None:
        """Run ``p`` (a token when span is 1) arrives at sub-cache ``level`` of ``lane`` on ``step``."""
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
        # a run is named by its first position (span 1: the token itself)
        run = [p - (p - self.sinks) % self.run_len if p >= self.sinks else -1 for p in pos]
        total, count = {}, {}
        for r, s in zip(run, scores):
            total[r], count[r] = total.get(r, 0.0) + s, count.get(r, 0) + 1
        lane.score = {r: total[r] / count[r] for r in total}  # a run's mean: span 1 is the token's own score
        for p, r in zip(pos, run):
            if p <= lane.last:
                continue
            lane.last = p
            if p < self.sinks:  # the first tokens of the sequence are the attention sinks
                lane.sink_pos.append(p)
            elif r != lane.run:  # a run enters sub-cache 0 with its first token; the rest join it there
                lane.run = r
                self._arrive(lane, 0, r, lane.step)
                lane.step += 1
        for level in range(self.levels):  # n may have shrunk (a larger chunk): evict down the levels
            q = lane.sub[level]
            while len(q) > self.sizes[level]:
                self._arrive(lane, level + 1, q.popleft(), lane.step)
        runs = set()
        for q in lane.sub:
            runs.update(q)
        sinks = set(lane.sink_pos[:n])
        lane.sink_pos = [p for p in lane.sink_pos if p in sinks]
        return [i for i, (p, r) in enumerate(zip(pos, run)) if (p in sinks if r < 0 else r in runs)]

    def keep(self, abs_pos: torch.Tensor, scores: torch.Tensor, n: int) -> torch.Tensor:
        """Indices (sorted) of at most n tokens to keep: per KV head, abs_pos and scores (Hkv, S), each row
        ascending -> (Hkv, n'); a 1-D abs_pos (one cascade for every head) gives 1-D indices."""
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
