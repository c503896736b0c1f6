"""CarM (Lee et al., DAC 2022): a replay method (ER or DER++) whose RAM episodic memory is
refreshed from the flash tier while training goes on. After each step, ``swap_ratio`` of the
replayed samples are swapped out -- correctly predicted lowest-entropy first, then wrongly
predicted highest-entropy, the quota split across classes in proportion to the batch -- and
replaced by random stored samples of the same class. No swap during the first task.
``carm`` swaps asynchronously (the step never waits on flash); ``carm-sync`` waits (baseline)."""

from __future__ import annotations

import numpy as np
import torch

from miro_runtime.storage import SwapEngine


def select_swap_out(logits, labels, ratio: float) -> np.ndarray:
    """Indices (into the replay batch) to swap out, by CarM's hybrid rule. A replay batch is tens
    of samples: numpy and plain Python, no torch op -- this runs on a swap worker thread, where a
    torch op would start a second OpenMP team competing with the trainer's for the cores."""
    lg = logits.numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)  # (R, K)
    y = (labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)).tolist()
    n = len(y)
    quota_total = int(round(ratio * n))
    if quota_total == 0 or n == 0:
        return np.empty(0, dtype=np.int64)
    z = lg - lg.max(axis=1, keepdims=True)  # (R, K), <= 0
    e = np.exp(z)
    s = e.sum(axis=1)  # (R,)
    # entropy of softmax(z) = log s - sum(p z), with no log of a vanishing probability
    ent_l = (np.log(s) - (e * z).sum(axis=1) / s).tolist()  # (R,)
    pred_l = z.argmax(axis=1).tolist()
    # one sort key per class: correct ones by rising entropy, then wrong ones by falling entropy
    by_class: dict = {}
    for i in range(n):
        by_class.setdefault(y[i], []).append((ent_l[i] if pred_l[i] == y[i] else 1e6 - ent_l[i], i))
    shares = {c: quota_total * len(m) / n for c, m in by_class.items()}
    quota = {c: int(v) for c, v in shares.items()}
    left = quota_total - sum(quota.values())
    for c in sorted(shares, key=lambda c: quota[c] - shares[c])[:left]:  # largest remainders
        quota[c] += 1
    out = [i for c, m in by_class.items() for _, i in sorted(m)[: quota[c]]]
    return np.asarray(sorted(out), dtype=np.int64)


class CarM:
    """Wraps a replay strategy; forwards everything and adds the swap after each step."""

    def __init__(self, base, sync: bool = False):
        self.base, self.sync = base, sync
        self.name = "carm-sync" if sync else "carm"
        self.engine = SwapEngine(base.flash, base.memory.ram, "samples", workers=base.cfg.swap_workers,
                                 seed=base.cfg.seed + 29)

    def __getattr__(self, item):  # begin_task, remember, training_data, memory, model, ...
        return getattr(self.base, item)

    def observe(self, x, y):
        loss = self.base.observe(x, y)
        rep = self.base.last_replay
        if self.base.task > 0 and rep is not None and self.base.cfg.swap_ratio > 0:
            slots, logits, labels, versions = rep
            ratio = self.base.cfg.swap_ratio

            def choose():  # runs on a swap worker in async mode: the step only enqueues
                pick = select_swap_out(logits, labels, ratio)
                return slots[pick], labels.numpy()[pick], versions[pick]

            if self.sync:
                self.engine.swap_now(*choose())
            else:
                self.engine.request_swap_lazy(choose, expected=int(round(ratio * len(slots))))
        return loss

    def end_task(self, *a, **kw):
        self.engine.drain()  # the memory update below must see settled slots
        return self.base.end_task(*a, **kw)

    def state_dict(self):
        self.engine.drain()
        st = self.base.state_dict()
        st["swap_counters"] = {k: float(v) for k, v in self.engine.counters.items()}
        return st

    def load_state_dict(self, st):
        self.base.load_state_dict(st)
        for k, v in st.get("swap_counters", {}).items():
            self.engine.counters[k] = type(self.engine.counters[k])(v)

    def stats(self):
        return {**self.base.stats(), "swap": self.engine.stats()}

    def close(self):
        self.engine.close()
