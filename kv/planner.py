"""OrbitFlow-style placement: which layers' KV stay in the hot tier under a byte budget, solved
exactly as a 0/1 integer program (a knapsack) on measured costs, cheap enough to re-solve every few
decode steps.

Cost model of one decode step. Cold layers are fetched by a prefetch thread that starts layer l's
fetch when layer l-1 starts computing, so a cold layer stalls the step by what its fetch takes beyond
the previous layer's compute: stall_l = max(0, fetch_l - compute_{l-1}) (layer 0: its whole fetch).
A hot layer stalls nothing. Keeping layer l hot saves stall_l and costs bytes_l of the budget; the
plan maximises the saving (ties: fewer hot bytes, then earlier layers).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import reduce
from typing import Optional, Sequence


@dataclass(frozen=True)
class LayerCost:
    bytes: int  # the layer's KV at the current length
    fetch_s: float  # measured: bring that KV in from the cold tiers
    compute_s: float = 0.0  # measured: the layer's attention + MLP at one decode step

    def __post_init__(self):
        if self.bytes < 0 or not math.isfinite(self.fetch_s) or self.fetch_s < 0 or self.compute_s < 0:
            raise ValueError(f"layer cost must be non-negative and finite, got {self}")


@dataclass(frozen=True)
class Plan:
    hot: tuple  # layer indices kept in the hot tier
    cold: tuple
    hot_bytes: int
    stall_s: float  # predicted stall per decode step with this placement
    method: str  # "dp" | "milp" | "all-hot"


def stalls(costs: Sequence[LayerCost]) -> list:
    """What each layer stalls a decode step by when cold (see the module's cost model)."""
    return [max(0.0, c.fetch_s - (costs[i - 1].compute_s if i else 0.0)) for i, c in enumerate(costs)]


def predicted_stall(costs: Sequence[LayerCost], hot) -> float:
    s = stalls(costs)
    return float(sum(v for i, v in enumerate(s) if i not in set(hot)))


def plan(costs: Sequence[LayerCost], budget: int, max_cells: int = 4_000_000) -> Plan:
    """The exact optimum. A dynamic program over the budget in units of the sizes' gcd (KV sizes are
    whole blocks, so the unit is at least a block) when that table is small; scipy's MILP otherwise."""
    if budget < 0:
        raise ValueError(f"hot budget must be >= 0 bytes, got {budget}")
    L = len(costs)
    total = sum(c.bytes for c in costs)
    if total <= budget:
        return Plan(tuple(range(L)), (), total, 0.0, "all-hot")
    sizes = [c.bytes for c in costs]
    unit = reduce(math.gcd, [s for s in sizes if s] or [1])
    cap = budget // unit
    if (cap + 1) * (L + 1) <= max_cells or not _have_scipy():
        hot, method = _dp(sizes, stalls(costs), unit, cap), "dp"  # exact either way; only slower when large
    else:
        hot, method = _milp(sizes, stalls(costs), budget), "milp"
    hot = tuple(sorted(hot))
    return Plan(hot, tuple(i for i in range(L) if i not in hot), sum(sizes[i] for i in hot),
                predicted_stall(costs, hot), method)


def _have_scipy() -> bool:
    try:
        import scipy.optimize  # noqa: F401  (scikit-learn, the demo extra, brings it)
        return True
    except ImportError:
        return False


def _dp(sizes, gains, unit, cap) -> list:
    # best[w] = (saved, -bytes, -index sum) using at most w units; exact 0/1 knapsack, one item at a time
    # over the whole capacity row at once (numpy): the serving planner solves it on every arrival and
    # re-plan, between two decode steps, and the same loop in Python took ~11 ms at a few thousand units
    # -- a gap in every decoding request's tokens. Same arithmetic and ties as _dp_reference.
    import numpy as np
    L = len(sizes)
    saved, nbytes, idx = np.zeros(cap + 1), np.zeros(cap + 1, dtype=np.int64), np.zeros(cap + 1, dtype=np.int64)
    take = np.zeros((L, cap + 1), dtype=bool)
    w_of = [s // unit for s in sizes]
    for i in range(L):
        w, g = w_of[i], float(gains[i])
        if w > cap:
            continue
        n = cap + 1 - w  # capacities w..cap, reached from 0..cap-w
        cs, cb, ci = saved[:n] + g, nbytes[:n] - sizes[i], idx[:n] - i
        os_, ob, oi = saved[w:], nbytes[w:], idx[w:]
        # more saved; then fewer bytes; then earlier layers
        better = (cs > os_) | ((cs == os_) & ((cb > ob) | ((cb == ob) & (ci > oi))))
        take[i, w:] = better
        saved[w:], nbytes[w:], idx[w:] = np.where(better, cs, os_), np.where(better, cb, ob), np.where(better, ci, oi)
    hot, c = [], cap
    for i in range(L - 1, -1, -1):  # walk back: was item i taken at this capacity?
        if take[i, c]:
            hot.append(i)
            c -= w_of[i]
    return hot


def _dp_reference(sizes, gains, unit, cap) -> list:
    """_dp in plain Python, one cell at a time (tests hold the two equal)."""
    L = len(sizes)
    w_of = [s // unit for s in sizes]
    best = [(0.0, 0, 0)] * (cap + 1)
    take = [[False] * (cap + 1) for _ in range(L)]
    for i in range(L):
        w, g = w_of[i], gains[i]
        new = list(best)
        for c in range(w, cap + 1):
            prev = best[c - w]
            cand = (prev[0] + g, prev[1] - sizes[i], prev[2] - i)
            if cand > new[c]:
                new[c] = cand
                take[i][c] = True
        best = new
    hot, c = [], cap
    for i in range(L - 1, -1, -1):
        if take[i][c]:
            hot.append(i)
            c -= w_of[i]
    return hot


def _milp(sizes, gains, budget) -> list:
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp
    L = len(sizes)
    # maximise saved stall, a hair less per byte so that ties go to fewer bytes
    eps = 1e-12 * (max(gains) or 1.0) / max(max(sizes), 1)
    c = -(np.asarray(gains, dtype=float) - eps * np.asarray(sizes, dtype=float))
    res = milp(c, constraints=LinearConstraint(np.asarray([sizes], dtype=float), 0, budget),
               integrality=np.ones(L), bounds=Bounds(0, 1))
    if res.status != 0:
        raise RuntimeError(f"placement MILP failed: {res.message}")
    return [i for i in range(L) if res.x[i] > 0.5]


def brute_force(costs: Sequence[LayerCost], budget: int) -> float:
    """The optimum stall by trying every placement (tests, small L)."""
    best = math.inf
    L = len(costs)
    for r in range(L + 1):
        for hot in itertools.combinations(range(L), r):
            if sum(costs[i].bytes for i in hot) <= budget:
                best = min(best, predicted_stall(costs, hot))
    return best


class Replanner:
    """Keeps a plan and re-solves it when the budget changes or the sequence has grown by
    ``grow_tokens`` since the last solve (KV sizes, and so the best placement, move with length)."""

    def __init__(self, grow_tokens: int = 64):
        self.grow_tokens = grow_tokens
        self.current: Optional[Plan] = None
        self._at = (None, -1)  # (budget, tokens) of the last solve
        self.solves = 0

    def get(self, costs_for, budget: int, tokens: int) -> Plan:
        """``costs_for(tokens)`` -> [LayerCost]; solved again only when needed."""
        b, t = self._at
        if self.current is None or b != budget or tokens - t >= self.grow_tokens:
            self.current = plan(costs_for(tokens), budget)
            self._at = (budget, tokens)
            self.solves += 1
        return self.current
