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
  fits beside the others'.
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

QUEUED, PREFILL, DECODE, DEFERRED, DONE = "queued", "prefill", "decode", "deferred", "done"
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
        self.fetch_block = measure_fetch(tier, "kv", kv_bytes(block_tokens, H, hd))
        with torch.no_grad():
            t0 = time.perf_counter()
            model.forward(torch.tensor([[1]]), 0, None)
        self.compute = (time.perf_counter() - t0) / L  # one layer, one token: measured
        self.scale = 1.0  # measured / predicted iteration time, from feedback
        self.live: list = []
        self.stats = {"plans": 0, "replans_feedback": 0, "deferrals": 0, "resumes": 0, "iterations": 0,
                      "peak_hot_bytes": 0}
        self._since_plan = math.inf
        self._dirty = True

    # ---------------------------------------------------------------- costs and plans
    def _costs(self, x: _Live, ahead: int) -> list:
        n = x.length + ahead
        nbytes = kv_bytes(n, self.model.n_kv_heads, self.model.head_dim)
        return [LayerCost(nbytes, self.fetch_block * -(-n // self.bt), self.compute)
                for _ in range(self.model.n_layers)]

    def _predict(self, xs: Sequence[_Live], hot: dict) -> float:
        """Seconds of one iteration: each request's step, computed and stalled on its cold layers."""
        t = 0.0
        for x in xs:
            cs = self._costs(x, 0)
            s = stalls(cs)
            t += sum(c.compute_s for c in cs) + sum(v for i, v in enumerate(s) if i not in set(hot.get(x.req.id, ())))
        return t * self.scale

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
        for x in holding:
            want = hot.get(x.req.id, ())
            if set(want) != set(x.hot):
                x.cache.set_hot(want)
                x.hot = tuple(want)
        self.stats["plans"] += 1
        self._since_plan, self._dirty = 0, False
        self.log("kv_plan", strategy=self.strategy, hot={x.req.id: len(x.hot) for x in holding},
                 deferred=[x.req.id for x in self.live if x.state == DEFERRED])

    def _orbitflow(self, running: list, room: int, ahead: int, now: float) -> dict:
        def solve(xs):
            return plan_requests({x.req.id: self._costs(x, ahead) for x in xs}, max(0, room))[0]
        hot = solve(running)
        # fallback: while the iteration cannot meet the tightest TBT target, defer the largest request
        decoding = [x for x in running if x.state == DECODE]
        while len(decoding) > 1:
            slo = min((x.req.slo_tbt_ms for x in decoding if x.req.slo_tbt_ms), default=None)
            if slo is None or self._predict(running, hot) * 1000 <= slo:
                break
            big = max(decoding, key=lambda x: (x.length, x.req.id))
            big.state, big.deferrals = DEFERRED, big.deferrals + 1
            self.stats["deferrals"] += 1
            self.log("kv_deferred", request=big.req.id, tokens=big.length,
                     predicted_ms=round(self._predict(running, hot) * 1000, 3), slo_tbt_ms=slo)
            running.remove(big)
            decoding.remove(big)
            hot = solve(running)
        # resume the deferred ones (oldest first) that fit the target again
        for x in sorted((x for x in self.live if x.state == DEFERRED), key=lambda x: x.req.arrival_s):
            trial = running + [x]
            h = solve(trial)
            slo = min((y.req.slo_tbt_ms for y in trial if y.state in (DECODE, DEFERRED) and y.req.slo_tbt_ms),
                      default=None)
            if not any(y.state == DECODE for y in running) or slo is None or self._predict(trial, h) * 1000 <= slo:
                x.state = DECODE
                self.stats["resumes"] += 1
                self.log("kv_resumed", request=x.req.id)
                running, hot = trial, h
        return hot

    # ---------------------------------------------------------------- admission and steps
    def _admit(self, x: _Live, now: float) -> bool:
        if self.strategy == "no-offload":
            need = lambda y: self.model.n_layers * kv_bytes(len(y.req.prompt) + y.req.max_new,  # noqa: E731
                                                             self.model.n_kv_heads, self.model.head_dim)
            if sum(need(y) for y in self.live if y.cache is not None) + need(x) > self.budget:
                return False
        x.cache = self.model.make_cache(cold=self.tier, hot_layers=(), block_tokens=self.bt,
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
            predicted = self._predict(stepped, {x.req.id: x.hot for x in stepped})
            if predicted > 0 and abs(took / predicted - 1) > self.tol:
                self.scale *= took / predicted
                self.stats["replans_feedback"] += 1
                self._dirty = True
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
        while any(x.state != DONE for x in self.live):
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
            ts = [t - start for t in x.times]
            tbt = [b - a for a, b in zip(ts, ts[1:])]
            tpot = (ts[-1] - ts[0]) / (len(ts) - 1) if len(ts) > 1 else None
            r = x.req
            out[r.id] = {"tokens": x.out, "ttft_s": ts[0] - r.arrival_s, "latency_s": ts[-1] - r.arrival_s,
                         "tpot_ms": None if tpot is None else tpot * 1000, "tbt_ms": [t * 1000 for t in tbt],
                         "deferrals": x.deferrals,
                         "tpot_met": None if r.slo_tpot_ms is None or tpot is None else tpot * 1000 <= r.slo_tpot_ms,
                         "tbt_met": None if r.slo_tbt_ms is None else sum(t * 1000 <= r.slo_tbt_ms for t in tbt)
                         / max(1, len(tbt))}
        wall = max((x.times[-1] for x in self.live if x.times), default=start) - start
        tpot = [r["tpot_met"] for r in out.values() if r["tpot_met"] is not None]
        tbt = [(r["tbt_met"], len(r["tbt_ms"])) for r in out.values() if r["tbt_met"] is not None]
        lat = sorted(r["latency_s"] for r in out.values())
        return {"requests": out, "stats": dict(self.stats), "strategy": self.strategy, "hot_budget": self.budget,
                "tpot_attainment": sum(tpot) / len(tpot) if tpot else None,  # requests whose TPOT met its target
                "tbt_attainment": (sum(m * n for m, n in tbt) / sum(n for _, n in tbt)  # token gaps within target
                                   if tbt and sum(n for _, n in tbt) else None),
                "p95_ms": 1000 * lat[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)] if lat else None,
                "tokens_per_s": sum(len(r["tokens"]) for r in out.values()) / wall if wall > 0 else None,
                "wall_s": wall}
