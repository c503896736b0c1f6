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

- ``orbitflow``: the plan across requests + re-planning on feedback + SLO-aware admission (a request
  starts when its decode steps, beside the others' at their final lengths under the plan, fit the
  tightest target; prefill chunks sized to what the TBT target leaves) + deferral when measured times
  still overrun it;
- ``all-offloaded``: every layer of every request cold;
- ``first-layers-hot``: the budget split evenly among the requests, each keeping its first layers hot;
- ``no-offload``: everything hot, a request admitted only when its whole KV (prompt + max new tokens)
  fits beside the others'; one whose KV is larger than the whole budget is refused (no tokens, every
  target missed): without offloading it cannot be served at all.
"""

from __future__ import annotations

import collections
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
MIN_CHUNK = 8  # prefill tokens per iteration at least: a prompt always moves on, whatever the targets
HEADROOM = 0.8  # admission and prefill chunks aim at this share of a target: measured steps vary by ~20%
ALONE_CHUNK = 512  # with nothing decoding, nobody's TBT waits on a chunk: large ones, for a short TTFT


@dataclass
class Request:
    id: str
    prompt: list  # token ids
    max_new: int
    slo_tpot_ms: Optional[float] = None  # None: the server's default target (``Server.slo_tpot_ms``), if any
    slo_tbt_ms: Optional[float] = None
    arrival_s: float = 0.0  # offset from the start of ``Server.run`` (``submit``: set to the time it came)

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
    on_done: Optional[Callable] = None  # ``submit``'s callback, given the request's result
    prefix_hits: int = 0  # stored prefix blocks fed instead of computed
    retired: bool = False  # its result counted and handed on
    peak_hot: int = 0  # bytes of its KV in RAM, at most
    cold_bytes: int = 0  # of its KV on flash when it finished

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
                 clock: Callable[[], float] = time.perf_counter, log: Optional[Callable] = None,
                 slo_tpot_ms: Optional[float] = None, slo_tbt_ms: Optional[float] = None, prefixes=None):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
        self.model, self.tier, self.budget, self.strategy = model, tier, hot_budget, strategy
        self.bt, self.chunk, self.replan_every, self.tol = block_tokens, prefill_chunk, replan_every, feedback_tolerance
        self.clock, self.log = clock, log or (lambda event, **kw: None)
        # the targets of requests that bring none; a change applies to those in flight from the next plan on
        self.slo_tpot_ms, self.slo_tbt_ms = slo_tpot_ms, slo_tbt_ms
        self.prefixes = prefixes  # a PrefixStore: stored prompt prefixes fed instead of computed (lossless)
        L, H, hd = model.n_layers, model.n_kv_heads, model.head_dim
        self.tails = L * kv_bytes(block_tokens - 1, H, hd)  # a request's cold layers keep a tail block in RAM
        from .generate import measure_fetch
        # the cost model, measured at start and refined from every iteration (an EMA): a layer's compute at
        # one decode step, a prompt token's in a chunk, and what one cold block adds to a step (its read from
        # the tier, copy and the share of it compute does not hide: on a CPU the prefetch thread competes
        # with the compute) -- measured on a real cache with every layer cold, not from a bare read
        with torch.no_grad():
            t0 = time.perf_counter()
            model.forward(torch.tensor([[1]]), 0, None)
            t1 = time.perf_counter()
            model.forward(torch.ones(1, 32, dtype=torch.long), 0, None)
            t2 = time.perf_counter()
        self.compute = (t1 - t0) / L  # one layer, one token: measured
        self.prefill_tok = (t2 - t1) / 32  # one prompt token through all layers, in a chunk
        self.cold_block = self._measure_cold(measure_fetch(tier, "kv", kv_bytes(block_tokens, H, hd)))
        self.live: list = []
        self.results: dict = {}  # request id -> result (``run``; ``submit`` hands it to the callback instead)
        self._inbox = collections.deque()  # (request, callback) from ``submit``, any thread
        self._start = self.clock()
        self._admit_key = None
        self.stats = {"plans": 0, "replans_feedback": 0, "deferrals": 0, "resumes": 0, "iterations": 0,
                      "peak_hot_bytes": 0, "served": 0, "refused": 0, "tpot_met": 0, "tpot_of": 0,
                      "tbt_met": 0, "tbt_of": 0, "slo_misses": 0}
        self._since_plan = math.inf
        self._dirty = True

    def _measure_cold(self, fetch: float, blocks: int = 8, steps: int = 3) -> float:
        """What a cold block adds to a decode step: ``blocks`` blocks per layer, every layer cold, ``steps``
        steps timed against the same steps all hot (the bare ``fetch`` of one block when it comes out lower)."""
        m, n = self.model, blocks * self.bt

        def steps_s(hot_layers) -> float:
            cache = m.make_cache(cold=self.tier, hot_layers=hot_layers, block_tokens=self.bt, model_id="calibrate")
            try:
                m.forward(torch.ones(1, n, dtype=torch.long), 0, cache)
                t0 = time.perf_counter()
                for i in range(steps):
                    m.forward(torch.tensor([[1]]), n + i, cache)
                return (time.perf_counter() - t0) / steps
            finally:
                m.tiered(cache).close(drop_blocks=True)
        with torch.no_grad():
            cold, hot = steps_s(()), steps_s(tuple(range(m.n_layers)))
        return max(fetch, (cold - hot) / (m.n_layers * blocks))

    # ---------------------------------------------------------------- costs and plans
    def _final(self, x: _Live) -> int:
        return len(x.req.prompt) + x.req.max_new

    def _ahead(self, x: _Live) -> int:
        """Tokens ``x`` can add before the next plan: a prefilling request its next chunk (a plan follows
        every chunk), a decoding one a token an iteration for at most ``replan_every`` iterations; the
        others none. A plan that fits these lengths holds the budget until the next one."""
        if x.state == PREFILL:
            return min(len(x.req.prompt) - x.done_prompt, self._chunk_cap())
        return self.replan_every if x.state == DECODE else 0

    def _chunk_cap(self) -> int:
        """The most prompt tokens ``_chunk`` gives this iteration (orbitflow prefills alone in large ones)."""
        if self.strategy == "orbitflow" and not any(x.state == DECODE for x in self.live):
            return max(self.chunk, ALONE_CHUNK)
        return self.chunk

    def _costs(self, x: _Live, ahead: Optional[int]) -> list:
        """Each layer of ``x`` at ``ahead`` tokens more (never past its last; None: at its last): its bytes,
        and what keeping it cold adds to a step (measured per block; a hair per byte besides, so that ties
        keep layers hot: the budget is there to be used, and a cold layer also costs its blocks' writes)."""
        n = self._final(x) if ahead is None else min(x.length + ahead, self._final(x))
        nbytes = kv_bytes(n, self.model.n_kv_heads, self.model.head_dim)
        cold = self.cold_block * -(-n // self.bt) + 1e-12 * nbytes
        return [LayerCost(nbytes, cold, 0.0) for _ in range(self.model.n_layers)]

    def _blocks_cold(self, x: _Live, hot, final: bool = False) -> int:
        return (self.model.n_layers - len(hot)) * -(-(self._final(x) if final else x.length) // self.bt)

    def _predict(self, xs: Sequence[_Live], hot: dict, final: bool = False) -> float:
        """Seconds of one iteration: each request's step, computed and slowed by its cold blocks (``final``:
        at the requests' last tokens). The compute is one token's: what a longer context adds to a step
        is too small to resolve at start on a noisy board, and lands in the refit cold-block cost."""
        return sum(self.model.n_layers * self.compute
                   + self.cold_block * self._blocks_cold(x, hot.get(x.req.id, ()), final) for x in xs)

    def _learn(self, stepped: list, took: float, chunk: int = 0) -> None:
        """An iteration's measured time against the model. With a prefill chunk: what a prompt token costs
        beyond the decode steps. Decode only, all hot: it refines the compute; with cold blocks, what they
        cost beyond the compute. A prediction off by more than the tolerance plans again."""
        if chunk:
            rest = took - self._predict(stepped, {x.req.id: x.hot for x in stepped})
            self.prefill_tok = 0.7 * self.prefill_tok + 0.3 * max(0.0, rest) / chunk
            return
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

    def _plan(self) -> None:
        holding = [x for x in self.live if x.cache is not None]
        room = self.budget - self.tails * len(holding)
        running = [x for x in holding if x.state != DEFERRED]
        if self.strategy == "no-offload":
            hot = {x.req.id: tuple(range(self.model.n_layers)) for x in holding}
        elif self.strategy == "all-offloaded":
            hot = {x.req.id: () for x in holding}
        elif self.strategy == "first-layers-hot":
            share = room // max(1, len(running))
            hot = {}
            for x in running:
                per = kv_bytes(x.length + self._ahead(x), self.model.n_kv_heads, self.model.head_dim)
                hot[x.req.id] = tuple(range(min(self.model.n_layers, max(0, share) // per)))
        else:
            hot = self._orbitflow(running, room)
        if self.strategy == "orbitflow" and self._keeps(holding, hot, room):
            hot = {x.req.id: x.hot for x in holding}  # moving KV costs writes and reads: only when it pays
        moved = []
        for x in holding:
            want = hot.get(x.req.id, ())
            if set(want) != set(x.hot):
                self.model.tiered(x.cache).set_hot(want)
                x.hot = tuple(want)
                moved.append(x.req.id)
        self.stats["plans"] += 1
        self._since_plan, self._dirty = 0, False
        if moved:  # a plan that changes nothing is not news
            self.log("kv_plan", strategy=self.strategy, hot={x.req.id: len(x.hot) for x in holding},
                     layers=self.model.n_layers, moved=moved,
                     deferred=[x.req.id for x in self.live if x.state == DEFERRED])

    def _keeps(self, holding: list, hot: dict, room: int) -> bool:
        """Keep the current placement when it still fits the budget until the next plan and the new plan
        would win less per iteration than moving the KV costs, spread over the next ``replan_every`` steps."""
        per = lambda x: kv_bytes(x.length + self._ahead(x), self.model.n_kv_heads, self.model.head_dim)  # noqa: E731
        if sum(len(x.hot) * per(x) for x in holding) > room:
            return False
        active = [x for x in holding if x.state in (DECODE, PREFILL)]
        # the gain at the requests' last tokens: a request just admitted (nothing to move yet) is placed at
        # once, not left cold through its prefill because moving its empty KV gains nothing now
        gain = self._predict(active, {x.req.id: x.hot for x in active}, final=True) - \
            self._predict(active, hot, final=True)
        moved = sum(len(set(x.hot) ^ set(hot.get(x.req.id, ()))) * -(-x.length // self.bt) for x in holding)
        return gain * self.replan_every <= moved * self.cold_block

    def targets(self, r: Request) -> tuple:
        """``r``'s (TPOT, TBT) targets in ms: its own, or the server's defaults."""
        return (self.slo_tpot_ms if r.slo_tpot_ms is None else r.slo_tpot_ms,
                self.slo_tbt_ms if r.slo_tbt_ms is None else r.slo_tbt_ms)

    def _target_s(self, xs) -> Optional[float]:
        """The tightest per-token target among ``xs``: an iteration within it meets both TBT and TPOT."""
        ms = [v for x in xs for v in self.targets(x.req) if v]
        return min(ms) / 1000 if ms else None

    def _fits(self, xs: list) -> bool:
        """Would ``xs`` decoding together, each at its last token, under the plan for them, with the
        smallest prefill chunk beside, meet the tightest of their targets?"""
        target = self._target_s(xs)
        if target is None:
            return True
        room = self.budget - self.tails * sum(1 for x in self.live if x.cache is not None or x in xs)
        hot = plan_requests({x.req.id: self._costs(x, None) for x in xs}, max(0, room))[0]
        return self._predict(xs, hot, final=True) + self.prefill_tok * MIN_CHUNK <= HEADROOM * target

    def _admit_fitting(self, now: float) -> None:
        """OrbitFlow's admission: first come, first served; the deferred (oldest first) before new ones; the
        next starts when it fits beside the running ones, or when nothing runs (none waits for ever)."""
        for x in sorted((x for x in self.live if x.state == DEFERRED), key=lambda x: x.req.arrival_s):
            busy = [y for y in self.live if y.state in (DECODE, PREFILL)]
            if busy and not self._fits(busy + [x]):
                return
            x.state = PREFILL if x.done_prompt < len(x.req.prompt) else DECODE
            self.stats["resumes"] += 1
            self.log("kv_resumed", request=x.req.id, tokens=x.length)
            self._dirty = True
        for x in self.live:
            if x.state != QUEUED or now < x.req.arrival_s:
                continue
            busy = [y for y in self.live if y.state in (DECODE, PREFILL)]
            if busy and not self._fits(busy + [x]):
                return
            self._admit(x, now)
            self._dirty = True

    def _orbitflow(self, running: list, room: int) -> dict:
        deferred = [x for x in self.live if x.state == DEFERRED]

        def solve(xs, waiting):  # the waiting ones keep layers hot only where the running ones leave room
            w = {x.req.id: 1e-3 for x in waiting}
            return plan_requests({x.req.id: self._costs(x, self._ahead(x)) for x in xs + waiting}, max(0, room), w)[0]

        def over(xs, hot) -> bool:
            target = self._target_s(xs)
            return target is not None and self._predict(xs, hot) > target

        # fallback under overload (admission keeps it rare: the measured costs rose, or the targets were
        # tightened in flight): while the decoding requests' iteration misses the tightest target, the largest
        # is deferred (it keeps its tokens and its KV, cold where the budget asks; no steps). Admission
        # resumes it, oldest first, when it fits again.
        decoding = [x for x in running if x.state == DECODE]
        hot = solve(running, deferred)
        while len(decoding) > 1 and over(decoding, hot):
            big = max(decoding, key=lambda x: (x.length, x.req.id))
            self._defer(big, self._predict(decoding, hot), self._target_s(decoding))
            running.remove(big)
            decoding.remove(big)
            deferred.append(big)
            hot = solve(running, deferred)
        return hot

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
        if self.prefixes is not None:  # a stored prefix, leaving at least one prompt token to compute
            got = self.prefixes.lookup(x.req.prompt, limit=(len(x.req.prompt) - 1) // self.bt)
            if got:
                for layer in range(self.model.n_layers):
                    self.model.feed(x.cache, layer, torch.cat([b[0] for b in got[layer]], dim=2),
                                    torch.cat([b[1] for b in got[layer]], dim=2))
                x.prefix_hits, x.done_prompt = len(got[0]), len(got[0]) * self.bt
        self.log("kv_admitted", request=x.req.id, prompt_tokens=len(x.req.prompt), prefix_hits=x.prefix_hits)
        return True

    def hot_bytes(self) -> int:
        return sum(self.model.tiered(x.cache).hot_bytes() for x in self.live if x.cache is not None)

    def _chunk(self) -> int:
        """Prompt tokens this iteration: the fixed chunk, or (orbitflow) what the tightest TBT/TPOT target
        of the decoding requests leaves beside their steps, and large ones when nothing decodes."""
        decoding = [x for x in self.live if x.state == DECODE]
        target = self._target_s(decoding) if self.strategy == "orbitflow" and decoding else None
        if target is None:
            return self._chunk_cap()
        spare = HEADROOM * target - self._predict(decoding, {x.req.id: x.hot for x in decoding})
        return max(MIN_CHUNK, min(self.chunk, int(spare / max(self.prefill_tok, 1e-9))))

    def iteration(self, now: float) -> None:
        if self.strategy == "orbitflow":
            # the head of the queue fits or not until something changes: an arrival, a request finished or
            # deferred, a new plan (every replan_every iterations at least); not solved again every iteration
            st = self.stats
            key = (sum(1 for x in self.live if x.state == QUEUED and now >= x.req.arrival_s),
                   st["served"] + st["refused"], st["deferrals"], st["plans"], self._dirty)
            if key != self._admit_key:
                self._admit_fitting(now)
                self._admit_key = key
        else:
            for x in self.live:
                if x.state == QUEUED and now >= x.req.arrival_s:
                    if self._admit(x, now):
                        self._dirty = True
                    elif self.strategy == "no-offload":
                        break  # first come, first served: later ones wait behind it
        if self._dirty or self._since_plan >= self.replan_every:
            self._plan()
        t0 = self.clock()
        stepped, n = [], 0
        with torch.no_grad():
            pre = next((x for x in self.live if x.state == PREFILL), None)
            if pre is not None:
                ids = torch.tensor([pre.req.prompt[pre.done_prompt:pre.done_prompt + self._chunk()]])
                n = ids.shape[1]
                logits = self.model.forward(ids, pre.done_prompt, pre.cache)
                pre.done_prompt += n
                self._dirty = True  # a chunk grew it by up to ``chunk`` tokens: plan again before the next
                if pre.done_prompt == len(pre.req.prompt):
                    pre.out.append(int(logits[0, -1].argmax()))
                    pre.times.append(self.clock())
                    pre.state = DECODE
                    if self.prefixes is not None:  # after its first token: not on the request's critical path
                        self.prefixes.store(pre.req.prompt, self.model.tiered(pre.cache).layer_kv)
            for x in self.live:
                if x.state != DECODE or x is pre or len(x.out) >= x.req.max_new:
                    continue
                logits = self.model.forward(torch.tensor([[x.out[-1]]]), x.length - 1, x.cache)
                x.out.append(int(logits[0, -1].argmax()))
                x.times.append(self.clock())
                stepped.append(x)
        took = self.clock() - t0
        total = 0
        for x in self.live:
            if x.cache is not None:
                hb = self.model.tiered(x.cache).hot_bytes()
                x.peak_hot, total = max(x.peak_hot, hb), total + hb
        self.stats["peak_hot_bytes"] = max(self.stats["peak_hot_bytes"], total)
        self.stats["iterations"] += 1
        self._since_plan += 1
        if n or stepped:  # feedback: the measured iteration against the plan's prediction
            self._learn(stepped, took, n)
        for x in list(self.live):
            if x.state == DECODE and len(x.out) >= x.req.max_new:
                x.state = DONE
                x.cold_bytes = self.model.tiered(x.cache).cold_bytes()
                self.model.tiered(x.cache).close(drop_blocks=True)
                x.cache = None
                self._dirty = True
                self.log("kv_done", request=x.req.id, tokens=len(x.out))
            if x.state in (DONE, REFUSED) and not x.retired:
                self._retire(x)

    def _result(self, x: _Live) -> dict:
        r, start = x.req, self._start
        tpot_slo, tbt_slo = self.targets(r)
        if x.state == REFUSED:
            return {"tokens": [], "refused": True, "ttft_s": None, "latency_s": math.inf, "tpot_ms": None,
                    "tbt_ms": [], "deferrals": 0, "tpot_met": None if tpot_slo is None else False,
                    "tbt_met": None if tbt_slo is None else 0.0, "tbt_gaps": r.max_new - 1, "prefix_hits": 0,
                    "slo_tpot_ms": tpot_slo, "slo_tbt_ms": tbt_slo, "prompt_tokens": len(r.prompt),
                    "peak_hot_bytes": 0, "cold_bytes": 0, "queued_s": None}
        ts = [t - start for t in x.times]
        tbt = [b - a for a, b in zip(ts, ts[1:])]
        tpot = (ts[-1] - ts[0]) / (len(ts) - 1) if len(ts) > 1 else None
        return {"tokens": x.out, "ttft_s": ts[0] - r.arrival_s, "latency_s": ts[-1] - r.arrival_s,
                "queued_s": None if x.admitted_s is None else x.admitted_s - r.arrival_s,
                "tpot_ms": None if tpot is None else tpot * 1000, "tbt_ms": [t * 1000 for t in tbt],
                "deferrals": x.deferrals, "prefix_hits": x.prefix_hits, "prompt_tokens": len(r.prompt),
                "peak_hot_bytes": x.peak_hot, "cold_bytes": x.cold_bytes,
                "slo_tpot_ms": tpot_slo, "slo_tbt_ms": tbt_slo,
                "tpot_met": None if tpot_slo is None or tpot is None else tpot * 1000 <= tpot_slo,
                "tbt_met": None if tbt_slo is None else sum(t * 1000 <= tbt_slo for t in tbt) / max(1, len(tbt)),
                "tbt_gaps": len(tbt)}

    def _retire(self, x: _Live) -> None:
        """A finished (or refused) request: its result counted, logged when it missed a target, handed to its
        callback; ``submit``'s requests leave ``live`` (a long-running server keeps no history)."""
        res, x.retired = self._result(x), True
        st = self.stats
        st["refused" if x.state == REFUSED else "served"] += 1
        if res["tpot_met"] is not None:
            st["tpot_met"] += bool(res["tpot_met"])
            st["tpot_of"] += 1
        if res["tbt_met"] is not None:
            st["tbt_met"] += round(res["tbt_met"] * res["tbt_gaps"])
            st["tbt_of"] += res["tbt_gaps"]
        if res["tpot_met"] is False or (res["tbt_met"] is not None and res["tbt_met"] < 1):
            st["slo_misses"] += 1
            self.log("kv_slo_miss", request=x.req.id, tpot_ms=res["tpot_ms"], slo_tpot_ms=res["slo_tpot_ms"],
                     tbt_met=res["tbt_met"], slo_tbt_ms=res["slo_tbt_ms"], deferrals=x.deferrals,
                     refused=x.state == REFUSED)
        if x.on_done is None:  # ``run``'s: kept for its report
            self.results[x.req.id] = res
        else:
            self.live.remove(x)
            x.on_done(res)

    # ---------------------------------------------------------------- a long-running server (the daemon's)
    def submit(self, req: Request, on_done: Callable[[dict], None]) -> None:
        """From any thread: ``req`` joins the queue at the next ``pump`` (its arrival is then); ``on_done``
        gets its result, from the thread that pumps."""
        self._inbox.append((req, on_done))

    def pump(self) -> bool:
        """One iteration when there is work (a worker thread calls it in a loop); False when idle."""
        now = self.clock() - self._start
        while self._inbox:
            req, cb = self._inbox.popleft()
            req.arrival_s = now
            self.live.append(_Live(req, on_done=cb))
            self._dirty = True
        if not any(x.state in (PREFILL, DECODE, DEFERRED, QUEUED) for x in self.live):
            return False
        self.iteration(now)
        return True

    def pending(self) -> bool:
        """Anything submitted and not finished?"""
        return bool(self._inbox) or any(x.state not in (DONE, REFUSED) for x in self.live)

    def queue(self) -> list:
        """The requests in flight, in arrival order, for ``status``."""
        return [{"id": x.req.id, "state": x.state, "prompt_tokens": len(x.req.prompt), "done_prompt": x.done_prompt,
                 "new_tokens": len(x.out), "max_new": x.req.max_new, "hot_layers": len(x.hot),
                 "deferrals": x.deferrals} for x in self.live]

    def attainment(self) -> dict:
        st = self.stats
        return {"tpot": st["tpot_met"] / st["tpot_of"] if st["tpot_of"] else None,
                "tbt": st["tbt_met"] / st["tbt_of"] if st["tbt_of"] else None}

    def close(self) -> None:
        """Drop the cold blocks of whatever is still in flight (a stopping daemon's)."""
        for x in self.live:
            if x.cache is not None:
                self.model.tiered(x.cache).close(drop_blocks=True)
                x.cache = None

    # ---------------------------------------------------------------- a trace, to the end (tests, bench)
    def run(self, requests: Sequence[Request], realtime: bool = True) -> dict:
        """Serve ``requests`` (arrivals as offsets from now; ``realtime=False``: all at once) to the end."""
        start = self._start = self.clock()
        self.results = {}
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
        out = {x.req.id: self.results[x.req.id] for x in self.live}
        for r in out.values():
            r.setdefault("refused", False)
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
