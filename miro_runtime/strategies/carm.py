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


def select_swap_out(logits: torch.Tensor, labels: torch.Tensor, ratio: float) -> np.ndarray:
    """Indices (into the replay batch) to swap out, by CarM's hybrid rule."""
    n = len(labels)
    quota_total = int(round(ratio * n))
    if quota_total == 0 or n == 0:
        return np.empty(0, dtype=np.int64)
    p = torch.softmax(logits.float(), dim=1)  # (R, K)
    ent = -(p * torch.log(p.clamp_min(1e-12))).sum(1).cpu().numpy()  # (R,)
    y = labels.cpu().numpy()
    correct = (p.argmax(1).cpu().numpy() == y)
    # one sort key: correct ones by rising entropy, then wrong ones by falling entropy
    key = np.where(correct, ent, 1e6 - ent)
    classes, counts = np.unique(y, return_counts=True)
    share = quota_total * counts / n
    quota = np.floor(share).astype(np.int64)
    left = quota_total - quota.sum()
    quota[np.argsort(-(share - quota), kind="stable")[:left]] += 1  # largest remainders
    order = np.lexsort((key, y))  # by class, then key
    ys = y[order]
    first = np.searchsorted(ys, ys, side="left")
    rank = np.arange(n) - first
    q = dict(zip(classes.tolist(), quota.tolist()))
    take = rank < np.array([q[c] for c in ys])
    return order[take]


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
            slots, logits, labels = rep
            pick = select_swap_out(logits, labels, self.base.cfg.swap_ratio)
            if pick.size:
                out_slots, classes = slots[pick], labels.numpy()[pick]
                if self.sync:
                    self.engine.swap_now(out_slots, classes)
                else:
                    self.engine.request_swap(out_slots, classes)
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
