"""CarM (Lee et al., DAC 2022): a replay method (ER or DER++) whose RAM episodic memory is
refreshed from the flash tier while training goes on. After each step, ``swap_ratio`` of the
replayed samples are swapped out -- correctly predicted lowest-entropy first, then wrongly
predicted highest-entropy, the quota split across classes in proportion to the batch -- and
replaced by random stored samples of the same class. No swap during the first task.
``carm`` swaps asynchronously (the step never waits on flash); ``carm-sync`` waits (baseline)."""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from miro_runtime.storage import SwapEngine

from .base import Strategy

MAX_GROUP = 8  # steps folded into one swap job at most: bounds how stale a chosen slot may get


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)  # logits may live on a GPU


def select_swap_out(logits, labels, ratio: float) -> np.ndarray:
    """Indices (into the replay batch) to swap out, by CarM's hybrid rule."""
    return select_swap_out_many([(logits, labels)], ratio)[0]


def select_swap_out_many(batches, ratio: float) -> list:
    """``select_swap_out`` for several steps' replay batches [(logits (R, K), labels (R,)), ...]."""
    return [_pick(ent, pred, _np(lb).tolist(), ratio) for (ent, pred), (_, lb) in zip(_rank(batches), batches)]


def _rank(batches) -> list:
    """[(entropy list, prediction list)] per batch, from one numpy pass over all their rows: a replay
    batch is tens of samples, so numpy's fixed per-call cost, not the arithmetic, is what a swap
    worker spends. Numpy and plain Python, no torch op -- this runs on a swap worker thread, where
    a torch op would start a second OpenMP team competing with the trainer's for the cores."""
    lgs = [_np(lg) for lg, _ in batches]
    if len({lg.shape[1:] for lg in lgs}) > 1:  # the head grew between two steps: rank them apart
        return [_rank([b])[0] for b in batches]
    lg = np.concatenate(lgs) if len(lgs) > 1 else lgs[0]  # (sum R, K)
    z = lg - lg.max(axis=1, keepdims=True)  # (sum R, K), <= 0
    e = np.exp(z)
    s = e.sum(axis=1)  # (sum R,)
    # entropy of softmax(z) = log s - sum(p z), with no log of a vanishing probability
    ent = (np.log(s) - (e * z).sum(axis=1) / s).tolist()
    pred = z.argmax(axis=1).tolist()
    out, at = [], 0
    for lgi in lgs:
        out.append((ent[at:at + len(lgi)], pred[at:at + len(lgi)]))
        at += len(lgi)
    return out


def _pick(ent: list, pred: list, y: list, ratio: float, skip=()) -> np.ndarray:
    """CarM's hybrid rule on one replay batch; rows in ``skip`` are passed over (their quota goes
    to the class's next row by the rule)."""
    n = len(y)
    quota_total = int(round(ratio * n))
    if quota_total == 0 or n == 0:
        return np.empty(0, dtype=np.int64)
    # one sort key per class: correct ones by rising entropy, then wrong ones by falling entropy
    by_class: dict = {}
    for i in range(n):
        by_class.setdefault(y[i], []).append((ent[i] if pred[i] == y[i] else 1e6 - ent[i], i))
    shares = {c: quota_total * len(m) / n for c, m in by_class.items()}
    quota = {c: int(v) for c, v in shares.items()}
    left = quota_total - sum(quota.values())
    for c in sorted(shares, key=lambda c: quota[c] - shares[c])[:left]:  # largest remainders
        quota[c] += 1
    out = [i for c, m in by_class.items() for i in [i for _, i in sorted(m) if i not in skip][: quota[c]]]
    return np.asarray(sorted(out), dtype=np.int64)


def choose_group(group, ratio: float):
    """(slots, classes, versions) to refill for a group of steps' replays [(slots, logits, labels,
    versions), ...], each step ranked on its own logits. Latest step first: a slot it picks is
    refilled under its newest version, and an earlier step that ranks the same slot high (it is
    still there: no swap has landed yet) gives that quota to its next slot by the rule, so the
    group refreshes as many distinct slots as its steps would one by one."""
    taken: set = set()
    slots, classes, versions = [], [], []
    for (sl, _, lb, ver), (ent, pred) in zip(group[::-1], _rank([(g[1], g[2]) for g in group[::-1]])):
        sl_l = _np(sl).tolist()
        skip = {i for i, s in enumerate(sl_l) if s in taken} if taken else ()
        p = _pick(ent, pred, _np(lb).tolist(), ratio, skip)
        taken.update(sl_l[i] for i in p.tolist())
        slots.append(_np(sl)[p])
        classes.append(_np(lb)[p])
        versions.append(_np(ver)[p])
    return (np.concatenate(slots).astype(np.int64), np.concatenate(classes).astype(np.int64),
            np.concatenate(versions))


class CarM(Strategy):
    """Wraps a replay strategy (ER or DER++) and adds the swap after each step. What it forwards to
    the wrapped method is named below, hook by hook; it owns only the swap engine and its group.

    Async mode folds the swaps of consecutive steps into one worker job spanning about
    ``cfg.swap_group_ms`` of training (at most ``MAX_GROUP`` steps). A worker that sleeps between
    short steps wakes cold (measured: a job of 8 samples, ~75 us in a warm loop, costs 250-300 us
    after a 4 ms sleep), and on a 2-core board that CPU comes straight from the trainer; one wake,
    one LMDB read transaction and one RAM write per group instead of per step halves it. Each
    step's replay is still ranked on its own logits by CarM's rule."""

    uses_memory = True

    def __init__(self, base: Strategy, sync: bool = False):  # no Strategy.__init__: the parts are base's
        self.base, self.sync = base, sync
        self.name = "carm-sync" if sync else "carm"
        self._engine = SwapEngine(base.flash, base.memory.ram, base.ns, workers=base.cfg.swap_workers,
                                 seed=base.cfg.seed + 29)
        self._group: list = []
        self._group_s = 0.0

    # ---------------------------------------------------------------- the wrapped method's parts
    @property
    def model(self):
        return self.base.model

    @property
    def memory(self):
        return self.base.memory

    @property
    def ns(self):
        return self.base.ns

    @property
    def cfg(self):
        return self.base.cfg

    @property
    def flash(self):
        return self.base.flash

    @property
    def stream(self):
        return self.base.stream

    @property
    def device(self):
        return self.base.device

    @property
    def task(self) -> int:
        return self.base.task

    @property
    def swap_engine(self) -> SwapEngine:
        return self._engine

    # ---------------------------------------------------------------- hooks forwarded as they are
    def begin_task(self, t: int) -> None:
        self.base.begin_task(t)

    def training_data(self, t, x, y, ids):
        return self.base.training_data(t, x, y, ids)

    def remember(self, x, y, ids, t: int) -> None:
        self.base.remember(x, y, ids, t)

    def renew_optimizer(self) -> None:
        self.base.renew_optimizer()

    def set_knobs(self, **knobs) -> None:
        self.base.set_knobs(**knobs)

    def summary_extra(self) -> dict:
        return self.base.summary_extra()

    # ---------------------------------------------------------------- hooks with the swap added
    def observe(self, x, y):
        t0 = time.perf_counter()
        loss = self.base.observe(x, y)
        rep = self.base.last_replay
        if self.base.task > 0 and rep is not None and self.base.cfg.swap_ratio > 0:
            if self.sync:
                self._engine.swap_now(*choose_group([rep], self.base.cfg.swap_ratio))
            else:
                self._group.append(rep)
                self._group_s += time.perf_counter() - t0
                if self._group_s * 1e3 >= self.base.cfg.swap_group_ms or len(self._group) >= MAX_GROUP:
                    self.flush()
        return loss

    def flush(self):
        """Hand the steps gathered so far to a swap worker (the step only enqueues)."""
        if not self._group:
            return
        group, ratio = self._group, self.base.cfg.swap_ratio
        self._group, self._group_s = [], 0.0
        self._engine.request_swap_lazy(lambda: choose_group(group, ratio),
                                      expected=sum(int(round(ratio * len(g[0]))) for g in group))

    def settle(self):
        """Every swap chosen so far has landed (task ends, checkpoints, resizes)."""
        self.flush()
        self._engine.drain()

    def end_task(self, t: int, x, y, ids, online: bool) -> None:
        self.settle()  # the memory update below must see settled slots
        self.base.end_task(t, x, y, ids, online)

    def state_dict(self):
        self.settle()
        st = self.base.state_dict()
        st["swap_counters"] = {k: float(v) for k, v in self._engine.counters.items()}
        st["swap_rng"] = json.dumps(self._engine.rng_state())  # settled: no queued job draws after it
        return st

    def load_state_dict(self, st):
        self.base.load_state_dict(st)
        for k, v in st.get("swap_counters", {}).items():
            if k in self._engine.counters:
                self._engine.counters[k] = type(self._engine.counters[k])(v)
        if "swap_rng" in st:
            self._engine.set_rng_state(json.loads(st["swap_rng"]))

    def stats(self):
        return {**self.base.stats(), "swap": self._engine.stats()}

    def close(self):
        self.flush()
        self._engine.close()
