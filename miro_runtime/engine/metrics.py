"""CL metrics over the accuracy matrix a[i][j] = accuracy on task j's classes after task i.

final average accuracy A_T = mean_j a[T][j]; forgetting F = mean_{j<T} max_{l<T}(a[l][j] - a[T][j]);
backward transfer BWT = mean_{j<T} (a[T][j] - a[j][j]). Resource figures per task beside them.
"""

from __future__ import annotations

import json
import os
import resource

import numpy as np
import torch


def _mean(vals) -> float:
    vals = [v for v in vals if v is not None]  # a task with no test data has no accuracy (the daemon's)
    return float(np.mean(vals)) if vals else 0.0


def final_avg_acc(acc) -> float:
    t = len(acc) - 1
    return _mean([acc[t][j] for j in range(t + 1)]) if acc else 0.0


def forgetting(acc) -> float:
    t = len(acc) - 1
    if t < 1:
        return 0.0
    return _mean([max(acc[i][j] for i in range(j, t)) - acc[t][j] for j in range(t)
                  if acc[t][j] is not None and all(acc[i][j] is not None for i in range(j, t))])


def bwt(acc) -> float:
    t = len(acc) - 1
    if t < 1:
        return 0.0
    return _mean([acc[t][j] - acc[j][j] for j in range(t) if acc[t][j] is not None and acc[j][j] is not None])


@torch.no_grad()
def evaluate(model, stream, upto: int, device="cpu", batch: int = 512) -> list:
    """Accuracy on each task 0..upto's test set, predicting among all classes seen (class-IL)."""
    model.eval()
    row = []
    for j in range(upto + 1):
        x, y = stream.test[j]
        if len(y) == 0:
            row.append(None)
            continue
        correct = 0
        for i in range(0, len(y), batch):
            out = model(torch.from_numpy(x[i:i + batch]).to(device))
            correct += int((out.argmax(1).cpu() == torch.from_numpy(y[i:i + batch])).sum())
        row.append(correct / len(y))
    return row


def peak_rss_mb() -> float:
    """Peak resident set size of this process (ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def anon_rss_mb() -> float:
    """Current anonymous RSS: process memory proper, excluding file pages such as LMDB's mmap
    (those are page cache the kernel can drop, and they count in ru_maxrss)."""
    try:
        with open(f"/proc/{os.getpid()}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def run_summary(lr, wall_s: float) -> dict:
    """A run's summary (summary.json, `miro run --json`, the daemon's eval) from a learner: the accuracy
    matrix and its CL metrics, throughput, memory, energy, the strategy's and the controller's extras."""
    T = len(lr.stream.tasks)
    acc = [row + [None] * (T - len(row)) for row in lr.acc]
    train_s = sum(r.train_s for r in lr.per_task)
    samples = sum(r.train_samples for r in lr.per_task)
    out = {"final_avg_acc": final_avg_acc(lr.acc), "forgetting": forgetting(lr.acc), "bwt": bwt(lr.acc),
           "acc_matrix": acc, "train_samples_per_s": samples / train_s if train_s else None,
           "peak_rss_mb": peak_rss_mb(), "peak_anon_rss_mb": max((r.peak_anon_rss_mb for r in lr.per_task),
                                                                 default=None),
           "energy_j": lr.energy_total(), "energy_provenance": lr.provenance(),
           "wall_s": wall_s, "train_s": train_s, "steps": lr.steps,
           "config": json.loads(lr.cfg.to_json()), "stream": lr.stream.describe(),
           "per_task": [r.to_dict() for r in lr.per_task]}
    out.update(lr.strategy.summary_extra())  # the prompt methods: step cost, memory, AToM/ALD applied
    if lr.hooks is not None:
        out.update(lr.hooks.summary())
    last = lr.per_task[-1].strategy if lr.per_task else {}
    if "swap" in last:
        out["swap"] = last["swap"]
    return out
