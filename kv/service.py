"""A long-lived KV-cache generation service: what the daemon lends to inference. It owns the KV
namespace's flash tier (its own LMDB environment, so KV writes never wait on the learner's single
LMDB writer), keeps the model loaded between requests and serves them from one worker thread:
lossless requests together through ``serving.Server`` (OrbitFlow: one plan of hot layers across the
requests within the namespace's RAM share, TPOT/TBT targets, deferral under overload), a lossy policy
or an explicit per-request hot budget alone between them (first come, first served), and counts what
it did for ``status``. It knows nothing of the daemon; the daemon maps its [kv] table onto ``KVShare``
and awaits ``submit``'s future.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from .names import POLICIES, model_note
from .sizes import kv_bytes


@dataclass
class KVShare:
    model: str = "builtin-tiny"
    policy: str = "full"
    ram_bytes: int = 32 << 20  # the hot budget a request may use at most
    flash_bytes: int = 256 << 20  # cold layers of a generation + stored prefixes
    block_tokens: int = 16
    max_new_tokens: int = 512
    reuse_prefixes: bool = True
    slo_tpot_ms: float = 0.0  # targets of requests that bring none (0: none)
    slo_tbt_ms: float = 0.0


class KVService:
    BURST_S = 0.5  # a worker's energy window: this long of iterations at most, then the meter closes it

    def __init__(self, root: str, share: KVShare, model_cache: Optional[str] = None,
                 metered: Optional[Callable] = None, log: Optional[Callable] = None):
        """``metered(kind, fn)``: runs ``fn`` in an energy window booked as ``kind`` (the daemon's); ``log(event,
        **fields)``: where plans, deferrals, resumes and SLO misses go."""
        self.root, self.share = root, share
        # a pretrained model is dequantised beside the KV store (<state_dir>/kv/models): the daemon's state
        # stays in one place and its user need not own a home cache directory
        self.model_cache = model_cache or os.path.join(root, "models")
        self.metered = metered or (lambda kind, fn: fn())
        self.log = log or (lambda event, **kw: None)
        self._tier, self._model, self._model_name, self._server = None, None, None, None
        self._jobs = collections.deque()  # (Job) first come, first served
        self._cv = threading.Condition()
        self._worker: Optional[threading.Thread] = None
        self._closing = False
        self._ids = itertools.count(1)
        self._inflight: dict = {}  # job id -> job, while the server holds it
        self._answers: list = []  # (job, result, error) finished in the current burst
        self.counters = {"requests": 0, "errors": 0, "tokens": 0}
        self.last: Optional[dict] = None
        self.busy = False

    def _open(self):
        if self._tier is None:
            from miro_runtime.storage import FlashTier

            from .generate import KV_SYNC
            os.makedirs(self.root, exist_ok=True)
            self._tier = FlashTier(self.root, sync_mode=KV_SYNC)
            # cold blocks belong to one generation: any found now were left by a process that died in one
            stale = self._tier.keys("kv")
            if stale:
                self._tier.delete_many("kv", stale)
                self.counters["stale_blocks_deleted"] = len(stale)
        if self._model is None or self._model_name != self.share.model:
            from .generate import load_model
            self._model = load_model(self.share.model, cache_root=self.model_cache)
            self._model_name = self.share.model
            self._server = None
        return self._tier, self._model

    def _serving(self):
        """The server of lossless requests, made with the model; the live [kv] keys (RAM share, default
        targets) are read at every burst."""
        tier, model = self._open()
        if self._server is None:
            from .prefix import PrefixStore
            from .serving import Server
            prefixes = (PrefixStore(tier, model.described, model.n_layers, self.share.block_tokens,
                                    max(1, self.share.flash_bytes)) if self.share.reuse_prefixes else None)
            self._server = Server(model, tier, self.share.ram_bytes, block_tokens=self.share.block_tokens,
                                  log=self.log, prefixes=prefixes)
        srv, s = self._server, self.share
        if srv.budget != s.ram_bytes:
            srv.budget, srv._dirty = s.ram_bytes, True
        srv.slo_tpot_ms, srv.slo_tbt_ms = s.slo_tpot_ms or None, s.slo_tbt_ms or None
        return srv

    # ---------------------------------------------------------------- requests
    def check(self, prompt, max_new_tokens, policy, hot_budget, slo_tpot_ms=None, slo_tbt_ms=None) -> tuple:
        """The request's parameters, or a ValueError naming the one that is wrong."""
        s = self.share
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("prompt must be a non-empty string")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if max_new_tokens > s.max_new_tokens:
            raise ValueError(f"max_new_tokens {max_new_tokens} is over kv.max_new_tokens = {s.max_new_tokens}")
        policy = policy or s.policy
        if policy not in POLICIES:
            raise ValueError(f"policy {policy!r} is not one of {', '.join(POLICIES)}")
        if hot_budget is not None:
            if isinstance(hot_budget, bool) or not isinstance(hot_budget, int) or hot_budget < 1:
                raise ValueError(f"hot_budget must be an integer >= 1 (bytes), got {hot_budget!r}")
            if hot_budget > s.ram_bytes:
                raise ValueError(f"hot_budget {hot_budget} B is over the KV namespace's RAM share kv.ram_bytes = "
                                 f"{s.ram_bytes}")
        for name, v in (("slo_tpot_ms", slo_tpot_ms), ("slo_tbt_ms", slo_tbt_ms)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
                raise ValueError(f"{name} must be a number of milliseconds > 0, got {v!r}")
        return prompt.encode(), max_new_tokens, policy, hot_budget, slo_tpot_ms, slo_tbt_ms

    def submit(self, prompt, max_new_tokens=32, policy=None, hot_budget=None, slo_tpot_ms=None,
               slo_tbt_ms=None) -> concurrent.futures.Future:
        """Queue a request; the future gets its result (or the error that ended it)."""
        job = _Job(next(self._ids), *self.check(prompt, max_new_tokens, policy, hot_budget, slo_tpot_ms, slo_tbt_ms))
        with self._cv:
            if self._closing:
                raise RuntimeError("the KV service is stopping")
            self.counters["requests"] += 1
            self._jobs.append(job)
            if self._worker is None:
                self._worker = threading.Thread(target=self._loop, name="mirod-kv", daemon=True)
                self._worker.start()
            self._cv.notify()
        return job.future

    def generate(self, *args, **kw) -> dict:
        """``submit`` and wait (in-process callers)."""
        return self.submit(*args, **kw).result()

    # ---------------------------------------------------------------- the worker
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closing and not self._jobs and not (self._server and self._server.pending()):
                    self.busy = False
                    self._cv.wait()
                if self._closing:
                    break
                self.busy = True
            try:
                self.metered("kv", self._burst)
            except Exception as e:  # noqa: BLE001 -- the requests in flight get it; the service goes on
                self._fail_all(e)
            finally:  # answered after the window closed: a status read after the answer has its joules booked
                self._answer()

    def _burst(self) -> None:
        """Iterations for up to BURST_S: lossless requests join the server as they come; a request that must
        run alone waits at the head of the queue until the server is idle."""
        end = time.monotonic() + self.BURST_S
        while time.monotonic() < end and not self._answers:
            with self._cv:
                head = self._jobs[0] if self._jobs else None
            if head is not None and head.shared:
                with self._cv:
                    self._jobs.popleft()
                self._start_shared(head)
                continue
            if self._server is not None and self._serving().pump():
                continue
            if head is None:
                return
            with self._cv:
                self._jobs.popleft()
            self._run_alone(head)

    def _start_shared(self, job) -> None:
        from .serving import Request
        try:
            srv = self._serving()
            model = self._model
            ids = model.encode(job.prompt)
            need = model.n_layers * kv_bytes(len(ids) + job.n, model.n_kv_heads, model.head_dim)
            if need > self.share.flash_bytes:  # all of it may have to go cold: it must fit the flash share
                raise ValueError(f"this generation needs up to {need} B of cold KV, over the KV namespace's "
                                 f"flash share kv.flash_bytes = {self.share.flash_bytes}")
        except Exception as e:  # noqa: BLE001
            self._finish(job, error=e)
            return
        t0 = time.perf_counter()
        self._inflight[job.id] = job
        srv.submit(Request(f"q{job.id}", ids, job.n, job.slo_tpot_ms, job.slo_tbt_ms),
                   lambda res: self._finish(job, self._shared_result(res, t0)))

    def _shared_result(self, res: dict, t0: float) -> dict:
        model, out = self._model, res["tokens"]
        tpot = res["tpot_ms"]
        return {"model": model.described, "policy": "full", "prompt_tokens": res["prompt_tokens"],
                "new_tokens": len(out), "text": model.decode(out), "tokens": out, "model_note": model.note,
                "tokenizer": model.tokenizer, "ttft_s": res["ttft_s"],
                "tokens_per_s": 1000 / tpot if tpot else None, "hot_bytes": res["peak_hot_bytes"],
                "peak_hot_bytes": res["peak_hot_bytes"], "cold_bytes": res["cold_bytes"],
                "hot_budget": self.share.ram_bytes, "prefix_hits": res["prefix_hits"],
                "prefix_tokens_reused": res["prefix_hits"] * self.share.block_tokens,
                "served": "together", "queued_s": res["queued_s"], "latency_s": res["latency_s"],
                "tpot_ms": tpot, "slo_tpot_ms": res["slo_tpot_ms"], "slo_tbt_ms": res["slo_tbt_ms"],
                "tpot_met": res["tpot_met"], "tbt_met": res["tbt_met"], "deferrals": res["deferrals"],
                "wall_s": time.perf_counter() - t0}

    def _run_alone(self, job) -> None:
        from .generate import run_generate
        try:
            tier, model = self._open()
            hot = job.hot_budget or self.share.ram_bytes
            # cold layers of this generation must fit the flash share beside the stored prefixes
            layer_bytes = kv_bytes(len(model.encode(job.prompt)) + job.n, model.n_kv_heads, model.head_dim)
            cold_need = max(0, layer_bytes * model.n_layers - hot) if job.policy == "full" else 0
            if cold_need > self.share.flash_bytes:
                raise ValueError(f"this generation needs {cold_need} B of cold KV, over the KV namespace's "
                                 f"flash share kv.flash_bytes = {self.share.flash_bytes}")
            reuse = self.share.reuse_prefixes and job.policy == "full"
            res = run_generate(self.share.model, job.prompt, job.n, job.policy, hot,
                               block_tokens=self.share.block_tokens, tier=tier, model=model, reuse_prefixes=reuse,
                               prefix_cap=max(1, self.share.flash_bytes - cold_need))
            res["served"] = "alone"
        except Exception as e:  # noqa: BLE001
            self._finish(job, error=e)
            return
        self._finish(job, res)

    def _finish(self, job, res: Optional[dict] = None, error: Optional[BaseException] = None) -> None:
        """From the worker: answered by ``_answer`` once the burst's energy window is booked (the burst ends
        at once); from another thread (``close``): now."""
        self._inflight.pop(job.id, None)
        if job.future.done():
            return
        if threading.current_thread() is self._worker:
            self._answers.append((job, res, error))
        else:
            self._settle(job, res, error)

    def _answer(self) -> None:
        while self._answers:
            self._settle(*self._answers.pop(0))

    def _settle(self, job, res: Optional[dict], error: Optional[BaseException]) -> None:
        if job.future.done():
            return
        if error is not None:
            self.counters["errors"] += 1
            job.future.set_exception(error)
            return
        self.counters["tokens"] += res["new_tokens"]
        self.last = {k: res.get(k) for k in ("policy", "prompt_tokens", "new_tokens", "tokens_per_s", "ttft_s",
                                              "hot_bytes", "cold_bytes", "prefix_hits", "served", "tpot_ms",
                                              "queued_s")}
        self.last["at"] = time.time()
        job.future.set_result(res)

    def _fail_all(self, e: BaseException) -> None:
        """The server itself failed: every request in it gets the error, and a fresh server takes the next."""
        srv, self._server = self._server, None
        for job in list(self._inflight.values()):
            self._finish(job, error=RuntimeError(f"KV serving failed: {type(e).__name__}: {e}"))
        if srv is not None:
            srv.close()

    # ---------------------------------------------------------------- status and stop
    def status(self) -> dict:
        used = prefix = cold = prefixes = None
        if self._tier is not None:  # opened by the first generation
            prefix, cold = self._tier.bytes_used("kvprefix"), self._tier.bytes_used("kv")
            used, prefixes = prefix + cold, len(self._tier.keys("kvprefix.idx"))
        srv = self._server
        with self._cv:
            waiting = len(self._jobs)
        serving = None
        if srv is not None:
            st = srv.stats
            serving = {"queue": srv.queue(), "attainment": srv.attainment(), "deferrals": st["deferrals"],
                       "resumes": st["resumes"], "plans": st["plans"], "replans_feedback": st["replans_feedback"],
                       "served": st["served"], "slo_misses": st["slo_misses"], "iterations": st["iterations"],
                       "cost_model": {"cold_block_ms": round(srv.cold_block * 1000, 4),
                                      "layer_step_ms": round(srv.compute * 1000, 4),
                                      "prefill_token_ms": round(srv.prefill_tok * 1000, 4)}}
        return {**asdict(self.share), "model_note": model_note(self.share.model), "dir": self.root,
                "model_loaded": self._model is not None,
                "flash_used_bytes": used, "flash_prefix_bytes": prefix, "flash_cold_bytes": cold,
                "prefix_chunks": prefixes, "busy": self.busy, "waiting": waiting, "serving": serving,
                **self.counters, "last": self.last}

    def close(self, timeout: Optional[float] = None) -> bool:
        """Stop after the current burst; requests not finished get an error. False: the worker did not stop in
        ``timeout`` s (it is a daemon thread: the process may exit anyway)."""
        with self._cv:
            self._closing = True
            pending = list(self._jobs)
            self._jobs.clear()
            self._cv.notify_all()
        for job in pending:
            job.future.set_exception(RuntimeError("the KV service stopped before this request ran"))
        if self._worker is not None:
            self._worker.join(timeout)
            if self._worker.is_alive():
                return False
        for job in list(self._inflight.values()):
            self._finish(job, error=RuntimeError("the KV service stopped during this request"))
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._tier is not None:
            self._tier.close()
            self._tier = None
        return True


class _Job:
    def __init__(self, id_, prompt, n, policy, hot_budget, slo_tpot_ms, slo_tbt_ms):
        self.id, self.prompt, self.n, self.policy, self.hot_budget = id_, prompt, n, policy, hot_budget
        self.slo_tpot_ms, self.slo_tbt_ms = slo_tpot_ms, slo_tbt_ms
        self.future = concurrent.futures.Future()
        # lossless with no hot budget of its own: served together; anything else runs alone
        self.shared = policy == "full" and hot_budget is None
