"""Concurrent generation with SLOs, after OrbitFlow: many requests share one hot byte budget; each
request's layers are placed hot or cold by one exact plan across requests x layers, solved again on
arrivals, completions, growth and when measured iteration times leave the plan's prediction; under
overload the request with the largest KV is deferred (all its layers cold, no steps) and resumed when
the others leave room -- never dropped.

Scheduling is iteration-level (Orca's continuous batching, one request after another within an
iteration: the caches differ in length and placement, so there is no batched matmul across requests):
every iteration runs one decode step of each decoding request and one prefill chunk of the oldest
request still prefilling. A request's TBT is the time between its consecutive tokens, its TPOT the mean
over its decode, its latency arrival to last token. The caches are lossless (``full``), so a request's
tokens are the tokens it would get alone. Strategies (bench/kv.py compares them):

- ``orbitflow``: the plan across requests + re-planning on feedback + deferral;
- ``all-offloaded``: every layer of every request cold;
- ``first-layers-hot``: the budget split evenly among the requests, each keeping its first layers hot;
- ``no-offload``: everything hot, a request admitted only when its whole KV (prompt + max new tokens)
  fits beside the others'; one whose KV is larger than the whole budget is refused (no tokens, every
  target missed): without offloading it cannot be served at all.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import reduce
from typing import Callable, Optional, Sequence

import torch

from .planner import LayerCost, _dp, stalls
from .sizes import kv_bytes

QUEUED, PREFILL, DECODE, DEFERRED, DONE, REFUSED = "queued", "prefill", "decode", "deferred", "done", "refused"
STRATEGIES = ("orbitflow", "all-offloaded", "first-layers-hot", "no-offload")


@dataclass
class Request:
    id: str
    prompt: list  # token ids
    max_new: int
    slo_tpot_ms: Optional[float] = None
    slo_tbt_ms: Optional[float] = None
    arrival_s: float = 0.0  # offset from the start of ``Server.run``

    def __post_init__(self):
        if not self.prompt or self.max_new < 1:
            raise ValueError(f"request {self.id}: a prompt of at least one token and max_new >= 1, got "
                             f"{len(self.prompt)} tokens and max_new={self.max_new}")


@dataclass
class _Live:
    req: Request
    cache: object = None
    state: str = QUEUED
    done_prompt: int = 0  # prompt tokens prefilled
    out: list = field(default_factory=list)
    times: list = field(default_factory=list)  # when each new token was produced (server clock)
    admitted_s: Optional[float] = None
    deferrals: int = 0
    hot: tuple = ()

    @property
    def length(self) -> int:
        return self.done_prompt + len(self.out)


# ---------------------------------------------------------------------------------------------- the plan
def plan_requests(costs: dict, budget: int, weights: Optional[dict] = None) -> tuple:
    """``costs``: {request: [LayerCost per layer]} -> ({request: hot layers}, weighted stall per iteration).
    Each request's decode step stalls on its cold layers (planner.stalls), and in an iteration every request
    waits for every other's step, so the objective is the sum over requests (``weights``: a request's
    stall counted that many times; default 1): one exact 0/1 knapsack over all (request, layer) items."""
    weights = weights or {}
    items = [(r, i, c.bytes, weights.get(r, 1.0) * s) for r, cs in costs.items() for i, (c, s) in
             enumerate(zip(cs, stalls(cs)))]
    total = sum(b for _, _, b, _ in items)
    if total <= budget:
        return {r: tuple(range(len(cs))) for r, cs in costs.items()}, 0.0
    if budget < 0:
        raise ValueError(f"hot budget must be >= 0 bytes, got {budget}")
    sizes = [b for _, _, b, _ in items]
    unit = reduce(math.gcd, [s for s in sizes if s] or [1])
    taken = set(_dp(sizes, [g for *_, g in items], unit, budget // unit))
    hot = {r: tuple(i for k, (r2, i, _, _) in enumerate(items) if r2 == r and k in taken) for r in costs}
    return hot, sum(g for k, (*_, g) in enumerate(items) if k not in taken)


def brute_force_requests(costs: dict, budget: int, weights: Optional[dict] = None) -> float:
    """The optimum weighted stall by trying every placement (tests, a few items)."""
    import itertools
    weights = weights or {}
    items = [(r, c.bytes, weights.get(r, 1.0) * s) for r, cs in costs.items() for c, s in zip(cs, stalls(cs))]
    best = math.inf
    for mask in itertools.product((0, 1), repeat=len(items)):
        if sum(b for (_, b, _), m in zip(items, mask) if m) <= budget:
            best = min(best, sum(g for (_, _, g), m in zip(items, mask) if not m))
    return best


# ---------------------------------------------------------------------------------------------- the server
class Server:
    """Serves requests on one model and one cold tier within ``hot_budget`` bytes of KV in RAM."""

    def __init__(self, model, tier, hot_budget: int, strategy: str = "orbitflow", block_tokens: int = 16,
                 prefill_chunk: int = 128, replan_every: int = 16, feedback_tolerance: float = 0.5,
                 clock: Callable[[], float] = time.perf_counter, log: Optional[Callable] = None):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
        self.model, self.tier, self.budget, self.strategy = model, tier, hot_budget, strategy
        self.bt, self.chunk, self.replan_every, self.tol = block_tokens, prefill_chunk, replan_every, feedback_tolerance
        self.clock, self.log = clock, log or (lambda event, **kw: None)
        L, H, hd = model.n_layers, model.n_kv_heads, model.head_dim
        self.tails = L * kv_bytes(block_tokens - 1, H, hd)  # a request's cold layers keep a tail block in RAM
        from .generate import measure_fetch
        # the cost model, measured at start and refined from every decode-only iteration (an EMA): a layer's
        # compute at one decode step, and what one cold block adds to a step (its read from the tier, copy and
        # the share of it compute does not hide: on a CPU the prefetch thread competes with the compute)
        self.cold_block = measure_fetch(tier, "kv", kv_bytes(block_tokens, H, hd))
        with torch.no_grad():
            t0 = time.perf_counter()
            model.forward(torch.tensor([[1]]), 0, None)
        self.compute = (time.perf_counter() - t0) / L  # one layer, one token: measured
        self.live: list = []
        self.stats = {"plans": 0, "replans_feedback": 0, "deferrals": 0, "resumes": 0, "iterations": 0,
                      "peak_hot_bytes": 0}
        self._since_plan = math.inf
        self._dirty = True

    # ---------------------------------------------------------------- costs and plans
    def _costs(self, x: _Live, ahead: int) -> list:
        """Each layer of ``x`` at ``ahead`` tokens more: its bytes, and what keeping it cold adds to a step
        (measured per block; a hair per byte besides, so that ties keep layers hot: the budget is there to
        be used, and a cold layer also costs its blocks' writes)."""
        n = x.length + ahead
        nbytes = kv_bytes(n, self.model.n_kv_heads, self.model.head_dim)
        cold = self.cold_block * -(-n // self.bt) + 1e-12 * nbytes
        return [LayerCost(nbytes, cold, 0.0) for _ in range(self.model.n_layers)]

    def _blocks_cold(self, x: _Live, hot) -> int:
        return (self.model.n_layers - len(hot)) * -(-x.length // self.bt)

    def _predict(self, xs: Sequence[_Live], hot: dict) -> float:
        """Seconds of one iteration: each request's step, computed and slowed by its cold blocks."""
        return sum(self.model.n_layers * self.compute + self.cold_block * self._blocks_cold(x, hot.get(x.req.id, ()))
                   for x in xs)

    def _learn(self, stepped: list, took: float) -> None:
        """A decode-only iteration's measured time against the model: all hot, it refines the compute;
        with cold blocks, what they cost beyond the compute. A prediction off by more than the tolerance
        plans again."""
        predicted = self._predict(stepped, {x.req.id: x.hot for x in stepped})
        cold = sum(self._blocks_cold(x, x.hot) for x in stepped)
        if cold:
            per = max(0.0, took - self.model.n_layers * self.compute * len(stepped)) / cold
            self.cold_block = 0.7 * self.cold_block + 0.3 * per
        else:
            self.compute = 0.7 * self.compute + 0.3 * took / (self.model.n_layers * len(stepped))
        if predicted > 0 and abs(took / predicted - 1) > self.tol:
            self.stats["replans_feedback"] += 1
            self._dirty = True

    def _plan(self, now: float) -> None:
        holding = [x for x in self.live if x.cache is not None]
        room = self.budget - self.tails * len(holding)
        running = [x for x in holding if x.state != DEFERRED]
        ahead = self.replan_every + self.chunk
        if self.strategy == "no-offload":
            hot = {x.req.id: tuple(range(self.model.n_layers)) for x in holding}
        elif self.strategy == "all-offloaded":
            hot = {x.req.id: () for x in holding}
        elif self.strategy == "first-layers-hot":
            share = room // max(1, len(running))
            hot = {}
            for x in running:
                per = kv_bytes(x.length + ahead, self.model.n_kv_heads, self.model.head_dim)
                hot[x.req.id] = tuple(range(min(self.model.n_layers, max(0, share) // per)))
        else:
            hot = self._orbitflow(running, room, ahead, now)
        if self.strategy == "orbitflow" and self._keeps(holding, hot, room, ahead):
            hot = {x.req.id: x.hot for x in holding}  # moving KV costs writes and reads: only when it pays
        for x in holding:
            want = hot.get(x.req.id, ())
            if set(want) != set(x.hot):
                x.cache.set_hot(want)
                x.hot = tuple(want)
        self.stats["plans"] += 1
        self._since_plan, self._dirty = 0, False
        self.log("kv_plan", strategy=self.strategy, hot={x.req.id: len(x.hot) for x in holding},
                 deferred=[x.req.id for x in self.live if x.state == DEFERRED])

    def _keeps(self, holding: list, hot: dict, room: int, ahead: int) -> bool:
        """Keep the current placement when it still fits the budget ``ahead`` tokens on and the new plan
        would win less per iteration than moving the KV costs, spread over the next ``replan_every`` steps."""
        per = lambda x, n: kv_bytes(x.length + n, self.model.n_kv_heads, self.model.head_dim)  # noqa: E731
        if sum(len(x.hot) * per(x, ahead) for x in holding) > room:
            return False
        active = [x for x in holding if x.state in (DECODE, PREFILL)]
        gain = self._predict(active, {x.req.id: x.hot for x in active}) - self._predict(active, hot)
        moved = sum(len(set(x.hot) ^ set(hot.get(x.req.id, ()))) * -(-x.length // self.bt) for x in holding)
        return gain * self.replan_every <= moved * self.cold_block

    def _target_s(self, xs) -> Optional[float]:
        """The tightest per-token target among ``xs``: an iteration within it meets both TBT and TPOT."""
        ms = [v for x in xs for v in (x.req.slo_tbt_ms, x.req.slo_tpot_ms) if v]
        return min(ms) / 1000 if ms else None

    def _orbitflow(self, running: list, room: int, ahead: int, now: float) -> dict:
        deferred = [x for x in self.live if x.state == DEFERRED]

        def solve(xs, waiting):  # the waiting ones keep layers hot only where the running ones leave room
            w = {x.req.id: 1e-3 for x in waiting}
            return plan_requests({x.req.id: self._costs(x, ahead) for x in xs + waiting}, max(0, room), w)[0]

        def over(xs, hot) -> bool:
            target = self._target_s(xs)
            return target is not None and self._predict(xs, hot) > target

        # 1. fallback under overload: while the decoding requests' iteration misses the tightest target, the
        # largest is deferred (it keeps its tokens and its KV, cold where the budget asks; no steps)
        decoding = [x for x in running if x.state == DECODE]
        hot = solve(running, deferred)
        while len(decoding) > 1 and over(decoding, hot):
            big = max(decoding, key=lambda x: (x.length, x.req.id))
            self._defer(big, self._predict(decoding, hot), self._target_s(decoding))
            running.remove(big)
            decoding.remove(big)
            deferred.append(big)
            hot = solve(running, deferred)
        # 2. a request waiting to prefill starts only when its decode steps will fit beside the others'
        for x in [x for x in running if x.state == PREFILL and x.done_prompt == 0]:
            if decoding and over(decoding + [x], hot):
                self._defer(x, self._predict(decoding + [x], hot), self._target_s(decoding + [x]))
                running.remove(x)
                deferred.append(x)
        # 3. resume, oldest first, what fits again (anything, when nothing else decodes: none starves)
        for x in sorted(deferred, key=lambda x: x.req.arrival_s):
            busy = [y for y in running if y.state in (DECODE, PREFILL)]
            if not busy or not over(busy + [x], hot):
                x.state = PREFILL if x.done_prompt < len(x.req.prompt) else DECODE
                self.stats["resumes"] += 1
                self.log("kv_resumed", request=x.req.id)
                running.append(x)
                deferred.remove(x)
        return solve(running, deferred)

    def _defer(self, x: _Live, predicted_s: float, target_s: Optional[float]) -> None:
        x.state, x.deferrals = DEFERRED, x.deferrals + 1
        self.stats["deferrals"] += 1
        self.log("kv_deferred", request=x.req.id, tokens=x.length, predicted_ms=round(predicted_s * 1000, 3),
                 target_ms=None if target_s is None else round(target_s * 1000, 3))

    # ---------------------------------------------------------------- admission and steps
    def _need(self, x: _Live) -> int:
        """A request's whole KV, all layers at prompt + max new tokens."""
        return self.model.n_layers * kv_bytes(len(x.req.prompt) + x.req.max_new, self.model.n_kv_heads,
                                              self.model.head_dim)

    def _admit(self, x: _Live, now: float) -> bool:
        if self.strategy == "no-offload":
            if self._need(x) > self.budget:
                x.state = REFUSED
                self.log("kv_refused", request=x.req.id, need=self._need(x), hot_budget=self.budget)
                return True  # out of the queue: it does not hold up the requests behind it
            if sum(self._need(y) for y in self.live if y.cache is not None) + self._need(x) > self.budget:
                return False
        x.cache = self.model.make_cache(cold=self.tier, hot_layers=(), block_tokens=self.bt,  # placed by _plan
                                        model_id=f"req-{x.req.id}")
        x.state, x.admitted_s = PREFILL, now
        self.log("kv_admitted", request=x.req.id, prompt_tokens=len(x.req.prompt))
        return True

    def hot_bytes(self) -> int:
        return sum(x.cache.hot_bytes() for x in self.live if x.cache is not None)

    def iteration(self, now: float) -> None:
        for x in self.live:
            if x.state == QUEUED and now >= x.req.arrival_s:
                if self._admit(x, now):
                    self._dirty = True
                elif self.strategy == "no-offload":
                    break  # first come, first served: later ones wait behind it
        if self._dirty or self._since_plan >= self.replan_every:
            self._plan(now)
        t0 = self.clock()
        stepped = []
        with torch.no_grad():
            pre = next((x for x in self.live if x.state == PREFILL), None)
            if pre is not None:
                ids = torch.tensor([pre.req.prompt[pre.done_prompt:pre.done_prompt + self.chunk]])
                logits = self.model.forward(ids, pre.done_prompt, pre.cache)
                pre.done_prompt += ids.shape[1]
                self._dirty = True  # a chunk grew it by up to ``chunk`` tokens: plan again before the next
                if pre.done_prompt == len(pre.req.prompt):
                    pre.out.append(int(logits[0, -1].argmax()))
                    pre.times.append(self.clock())
                    pre.state = DECODE
                    self._dirty = True
            for x in self.live:
                if x.state != DECODE or x is pre or len(x.out) >= x.req.max_new:
                    continue
                logits = self.model.forward(torch.tensor([[x.out[-1]]]), x.length - 1, x.cache)
                x.out.append(int(logits[0, -1].argmax()))
                x.times.append(self.clock())
                stepped.append(x)
        took = self.clock() - t0
        self.stats["peak_hot_bytes"] = max(self.stats["peak_hot_bytes"], self.hot_bytes())
        self.stats["iterations"] += 1
        self._since_plan += 1
        if stepped and pre is None:  # feedback: a decode-only iteration against the plan's prediction
            self._learn(stepped, took)
        for x in self.live:
            if x.state == DECODE and len(x.out) >= x.req.max_new:
                x.state = DONE
                x.cache.close(drop_blocks=True)
                x.cache = None
                self._dirty = True
                self.log("kv_done", request=x.req.id, tokens=len(x.out))

    def run(self, requests: Sequence[Request], realtime: bool = True) -> dict:
        """Serve ``requests`` (arrivals as offsets from now; ``realtime=False``: all at once) to the end."""
        start = self.clock()
        self.live = [_Live(r if realtime else Request(r.id, r.prompt, r.max_new, r.slo_tpot_ms, r.slo_tbt_ms, 0.0))
                     for r in sorted(requests, key=lambda r: r.arrival_s)]
        while any(x.state not in (DONE, REFUSED) for x in self.live):
            now = self.clock() - start
            if not any(x.state in (PREFILL, DECODE, DEFERRED) for x in self.live):
                nxt = min(x.req.arrival_s for x in self.live if x.state == QUEUED)
                if nxt > now:
                    time.sleep(nxt - now)
                    now = self.clock() - start
            self.iteration(now)
        return self.report(start)

    def report(self, start: float) -> dict:
        out = {}
        for x in self.live:
            r = x.req
            if x.state == REFUSED:
                out[r.id] = {"tokens": [], "refused": True, "ttft_s": None, "latency_s": math.inf, "tpot_ms": None,
                             "tbt_ms": [], "deferrals": 0, "tpot_met": None if r.slo_tpot_ms is None else False,
                             "tbt_met": None if r.slo_tbt_ms is None else 0.0, "tbt_gaps": r.max_new - 1}
                continue
            ts = [t - start for t in x.times]
            tbt = [b - a for a, b in zip(ts, ts[1:])]
            tpot = (ts[-1] - ts[0]) / (len(ts) - 1) if len(ts) > 1 else None
            out[r.id] = {"tokens": x.out, "ttft_s": ts[0] - r.arrival_s, "latency_s": ts[-1] - r.arrival_s,
                         "tpot_ms": None if tpot is None else tpot * 1000, "tbt_ms": [t * 1000 for t in tbt],
                         "deferrals": x.deferrals,
                         "tpot_met": None if r.slo_tpot_ms is None or tpot is None else tpot * 1000 <= r.slo_tpot_ms,
                         "tbt_met": None if r.slo_tbt_ms is None else sum(t * 1000 <= r.slo_tbt_ms for t in tbt)
                         / max(1, len(tbt)), "tbt_gaps": len(tbt)}
        wall = max((x.times[-1] for x in self.live if x.times), default=start) - start
        tpot = [r["tpot_met"] for r in out.values() if r["tpot_met"] is not None]
        tbt = [(r["tbt_met"], r["tbt_gaps"]) for r in out.values() if r["tbt_met"] is not None]
        lat = sorted(math.inf if r["latency_s"] is None else r["latency_s"] for r in out.values())  # refused: never
        return {"requests": out, "stats": dict(self.stats), "strategy": self.strategy, "hot_budget": self.budget,
                "tpot_attainment": sum(tpot) / len(tpot) if tpot else None,  # requests whose TPOT met its target
                "tbt_attainment": (sum(m * n for m, n in tbt) / sum(n for _, n in tbt)  # token gaps within target
                                   if tbt and sum(n for _, n in tbt) else None),
                "p95_ms": _finite(1000 * lat[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)]) if lat else None,
                "tokens_per_s": sum(len(r["tokens"]) for r in out.values()) / wall if wall > 0 else None,
                "wall_s": wall, "refused": sum(x.state == REFUSED for x in self.live)}


def _finite(v: float) -> Optional[float]:
    return v if math.isfinite(v) else None  # a p95 that falls on a refused request: there is none
