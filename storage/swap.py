"""Swap engine: CarM's asynchronous RAM<->flash carousel.

Workers touch only numpy and LMDB, never torch: a torch op on a second thread starts a second
OpenMP team that fights the trainer's threads for the cores (measured on 2 cores: steps 2x slower).

``request_swap(slots, classes)`` queues work and returns at once; a small pool of threads reads
random stored samples of the requested classes from the flash tier (LMDB releases the GIL while
it reads) and writes them into those RAM slots through the RAM tier's lock. A full queue drops
the request (counted) instead of blocking the trainer: a missed swap only delays freshness.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Optional, Sequence

import numpy as np

from .errors import DamagedStoreError
from .flash import ClassIndex, FlashTier
from .ram import RamTier


class SwapEngine:
    def __init__(self, flash: FlashTier, ram: RamTier, namespace: str = "samples", workers: int = 1,
                 max_queue: int = 64, seed: int = 0, pool: Optional[dict] = None):
        if not 1 <= workers <= 4:
            raise ValueError(f"swap workers must be 1..4, got {workers}")
        self.flash, self.ram, self.namespace = flash, ram, namespace
        self.pool = pool  # optional {class: stored ids} to draw from instead of the whole namespace
        self._q: "queue.Queue" = queue.Queue(maxsize=max_queue)
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()
        self._cond = threading.Condition()
        self._pending = 0
        self._error: Optional[Exception] = None  # a worker's failure, raised on the trainer's next call
        self._running = threading.Event()
        self._running.set()
        self.counters = {"requested": 0, "completed": 0, "dropped": 0, "bytes_read": 0, "swap_s": 0.0,
                         "jobs": 0}
        self._latencies: list = []
        self._threads = [threading.Thread(target=self._loop, name=f"swap-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    @property
    def pool(self) -> Optional[ClassIndex]:
        return self._pool

    @pool.setter
    def pool(self, pools: Optional[dict]):
        self._pool = None if pools is None else ClassIndex.from_pools(pools)

    # -------------------------------------------------------------- caller side (never blocks)
    def request_swap(self, slots: Sequence[int], classes: Sequence[int], versions=None) -> bool:
        """Queue a refill of ``slots`` with stored samples of ``classes``. ``versions`` (from
        ``RamTier.gather``) make the swap skip any slot rewritten before the worker reaches it."""
        slots = np.asarray(slots, dtype=np.int64)
        classes = np.asarray(classes, dtype=np.int64)
        if slots.shape != classes.shape:
            raise ValueError(f"slots {slots.shape} and classes {classes.shape} differ in shape")
        if not slots.size:
            return True
        job = (slots, classes, self.ram.generation, time.perf_counter(), versions)
        return self._enqueue(job, requested=int(slots.size), lost_if_full=int(slots.size))

    def request_swap_lazy(self, choose, expected: int = 0) -> bool:
        """Like ``request_swap``, but ``choose() -> (slots, classes, versions)`` runs on the worker, so a
        caller whose choice itself costs CPU (CarM's entropy ranking) pays only the enqueue."""
        job = (choose, expected, self.ram.generation, time.perf_counter())
        return self._enqueue(job, requested=0, lost_if_full=expected)  # counted when resolved

    def _raise_worker_error(self):
        """A worker that failed (a damaged record) stops training at the trainer's next swap call."""
        with self._cond:
            e = self._error
        if e is not None:
            raise e

    def _enqueue(self, job, requested: int, lost_if_full: int) -> bool:
        self._raise_worker_error()
        with self._cond:
            self.counters["requested"] += requested
            self._pending += 1
        try:
            self._q.put_nowait(job)
            return True
        except queue.Full:
            with self._cond:
                self.counters["requested"] += lost_if_full - requested
                self.counters["dropped"] += lost_if_full
                self._pending -= 1
                self._cond.notify_all()
            return False

    def _resolve(self, job):
        if not callable(job[0]):
            return job
        slots, classes, versions = job[0]()
        slots, classes = np.asarray(slots, dtype=np.int64), np.asarray(classes, dtype=np.int64)
        with self._cond:
            self.counters["requested"] += int(slots.size)
        return (slots, classes, job[2], job[3], versions)

    def swap_now(self, slots: Sequence[int], classes: Sequence[int], versions=None) -> int:
        """Blocking swap in the caller's thread (the carm-sync baseline). Returns slots filled."""
        slots = np.asarray(slots, dtype=np.int64)
        with self._cond:
            self.counters["requested"] += int(slots.size)
        return self._do((slots, np.asarray(classes, dtype=np.int64), self.ram.generation, time.perf_counter(),
                         versions))

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every queued request is done (task ends, checkpoints, tests)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        self._raise_worker_error()
        return True

    def pause(self):
        self._running.clear()

    def resume(self):
        self._running.set()

    def rng_state(self) -> dict:
        """The draw stream's position (JSON-safe): a checkpoint that keeps it resumes the same draws.
        Take it after ``drain()``; a queued job would draw after it."""
        with self._rng_lock:
            return self._rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        with self._rng_lock:
            self._rng.bit_generator.state = state

    @property
    def queue_depth(self) -> int:
        return self._q.qsize()

    def stats(self) -> dict:
        with self._cond:
            out = dict(self.counters)
            lat = np.asarray(self._latencies[-10000:], dtype=np.float64)
        out["queue_depth"] = self.queue_depth
        if lat.size:
            out["latency_ms_p50"] = float(np.percentile(lat, 50) * 1e3)
            out["latency_ms_p99"] = float(np.percentile(lat, 99) * 1e3)
        return out

    def close(self):
        self.drain(timeout=10.0)
        self._running.set()
        for _ in self._threads:
            self._q.put(None)
        for t in self._threads:
            t.join(timeout=10.0)

    # -------------------------------------------------------------- worker side
    def _loop(self):
        while True:
            job = self._q.get()
            if job is None:
                return
            self._running.wait()
            try:
                self._do(self._resolve(job))
            except Exception as e:  # noqa: BLE001 - a damaged record: the trainer hears of it at its next call
                with self._cond:
                    self._error = self._error or e
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()

    def _do(self, job) -> int:
        slots, classes, generation, t0, versions = job
        in_ram = self.ram.ids_snapshot()
        with self._rng_lock:
            if self._pool is not None:  # a restricted pool (a smaller flash tier, emulated)
                ids = self._pool.draw(classes, self._rng, in_ram)
            else:
                ids = self.flash.draw_ids(self.namespace, classes, self._rng, in_ram)
        versions = None if versions is None else np.asarray(versions)
        found = ids >= 0
        if not found.all():
            slots, ids = slots[found], ids[found]
            versions = None if versions is None else versions[found]
        dropped, done, nbytes = int(found.size - ids.size), 0, 0
        if ids.size:
            b = self.flash.read_batch(self.namespace, ids)
            x, labels, tasks, aux, ok = b["x"], b["labels"], b["tasks"], b["aux"], b["found"]
            wrong = ok & (labels != classes[found])
            if wrong.any():  # the class index sent us to a record of another class: it is damaged
                i = int(np.nonzero(wrong)[0][0])
                raise DamagedStoreError(f"{self.flash.path}: the class index lists sample {int(ids[i])} under class "
                                        f"{int(classes[found][i])}, but its record says {int(labels[i])}. Run "
                                        f"`miro store verify {self.flash.path}`")
            if not ok.all():  # an id evicted between the draw and the read is simply skipped
                slots, ids, x, labels, tasks = slots[ok], ids[ok], x[ok], labels[ok], tasks[ok]
                aux = None if aux is None else aux[ok]
                versions = None if versions is None else versions[ok]
            nbytes = int(x.nbytes)
            done = self.ram.replace_many(slots, x, labels, ids, tasks, aux, generation=generation, versions=versions)
            dropped += int(found.sum()) - done
        with self._cond:
            self.counters["completed"] += done
            self.counters["jobs"] += 1
            self.counters["dropped"] += dropped
            self.counters["bytes_read"] += nbytes
            self.counters["swap_s"] += time.perf_counter() - t0
            self._latencies.append(time.perf_counter() - t0)
            if len(self._latencies) > 20000:
                del self._latencies[:10000]
        return done
