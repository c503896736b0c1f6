"""One Miro profile: train a copy of the live model on a subsample of the new task for an arm's
epochs (replay from a copy of the memory resized to the arm's size, swaps from a flash pool cut to
the arm's budget), take its accuracy on a held-out slice plus stored samples of the past classes,
and predict the task's energy from the metered training window. The profiles also calibrate the
cost model that plans the next ones (training joules per new sample and epoch)."""

from __future__ import annotations

import copy
from typing import Optional

import numpy as np
import torch

from miro_runtime.engine.memory import EpisodicMemory
from miro_runtime.records import Candidate

from .knobs import Knobs

NO_REPLAY, REPLAY = "no-replay", "replay"  # task 0 trains on new samples only; later tasks replay too


class ArmProfiler:
    """Profiles arms and keeps what they cost: joules per new sample and epoch, apart for task 0
    (no replay) and later tasks, and the last profile's joules outside its training window."""

    def __init__(self, cfg):
        self.batch_size, self.replay = cfg.batch_size, (cfg.replay if cfg.strategy in ("carm", "carm-sync")
                                                        else cfg.strategy)
        # profiled training joules per new sample per epoch: [joules, samples] each
        self.units = {NO_REPLAY: [0.0, 0], REPLAY: [0.0, 0]}
        self.overhead_j = 0.0  # last profile's joules outside its training window (copy, set-up, eval)

    def unit(self, t: int, kn: Knobs) -> Optional[float]:
        """Training joules per new sample and epoch of a profile at task ``t`` with these knobs: what
        profiles of the same kind measured (task 0 has no replay, later tasks do); before the first
        profile with replay, task 0's figure times the samples a replay step trains on ((b + r) / b:
        er replays up to a batch, der two), so the first rounds after task 0 do not plan on half
        their cost. None before any profile."""
        j, n = self.units[REPLAY if t > 0 else NO_REPLAY]
        if n:
            return j / n
        j0, n0 = self.units[NO_REPLAY]
        if not n0:
            return None
        r = 0 if kn.method else min(self.batch_size, kn.memory) * (2 if self.replay == "der" else 1)
        return j0 / n0 * (self.batch_size + r) / self.batch_size

    def scale(self, factor: float) -> None:
        """Every cost measured so far times ``factor``: the cost per sample moved (a load change), and
        the profiles' relative costs are taken to hold."""
        for u in self.units.values():
            u[0] *= factor
        self.overhead_j *= factor

    def validation(self, view, t, xh, yh, rng):
        """Held-out slice of the new task + up to 5 stored samples per past class (from flash): its
        forward pass is part of every profile's cost, so it stays about as large as two steps."""
        xs, ys = [xh], [yh]
        past = [c for c in view.stream.classes_upto(t - 1)] if t > 0 else []
        ids = []
        for c in past:
            cid = view.flash.class_ids("samples", c)
            ids.extend(cid[rng.permutation(cid.size)[:5]].tolist())
        if ids:
            b = view.flash.read_batch("samples", ids)
            xs.append(b["x"])
            ys.append(b["labels"])
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    def profile(self, view, t, kn: Knobs, xs, ys, val, frac) -> Candidate:
        """Train a copy for the arm's epochs on the subsample. Everything (copy, set-up, training,
        evaluation) is metered and counted as profiling (``profile_j``); only the training window
        predicts the task's energy, so set-up costs do not blur the difference between arms."""
        from miro_runtime.engine.strategies import make_strategy
        live = view.strategy
        cfg = copy.copy(view.cfg)
        cfg.memory, cfg.flash_budget, cfg.swap_ratio, cfg.epochs = kn.memory, kn.flash_budget, kn.swap_ratio, kn.epochs
        name = view.cfg.strategy
        if name in ("carm", "carm-sync"):  # swaps in the trial are synchronous: its cost is its own;
            name = "carm-sync" if t > 0 else view.cfg.replay  # and there are none during task 0
        view.meter.begin_window("miro-profile")
        trial = make_strategy(name, copy.deepcopy(live.model), cfg, view.flash, view.stream, view.device)
        try:
            if trial.memory is not None and live.memory is not None:
                self._copy_memory(live.memory, trial.memory, kn.memory)
            if trial.swap_engine is not None and kn.flash_budget is not None:
                trial.swap_engine.pool = self._flash_pool(view, t, kn.flash_budget)
            trial.begin_task(t)
            if kn.method:
                trial.set_knobs(**dict(kn.method))
            X, Y = torch.from_numpy(xs), torch.from_numpy(ys)
            bs = cfg.batch_size
            view.meter.begin_window("miro-profile-train")
            for e in range(kn.epochs):
                perm = torch.from_numpy(np.random.default_rng([cfg.seed, t, e, 13]).permutation(len(Y)))
                for i in range(0, len(Y), bs):
                    idx = perm[i:i + bs]
                    trial.observe(X[idx], Y[idx])
            tm = view.meter.end_window("miro-profile-train")
            trial.model.eval()
            with torch.no_grad():
                acc = float((trial.model(val[0].to(view.device)).argmax(1).cpu() == val[1]).float().mean())
        finally:
            trial.close()
            m = view.meter.end_window("miro-profile")
        profile_j = m.joules if m.joules is not None else 0.0
        train_j = tm.joules if tm.joules is not None else profile_j
        u = self.units[REPLAY if t > 0 else NO_REPLAY]
        u[0] += train_j
        u[1] += kn.epochs * len(ys)
        self.overhead_j = max(0.0, profile_j - train_j)
        return Candidate(knobs=kn, acc=acc, joules=train_j / frac, seconds=tm.seconds / frac, profile_j=profile_j,
                         n_val=len(val[1]))

    @staticmethod
    def _copy_memory(src: EpisodicMemory, dst: EpisodicMemory, capacity: int):
        st = src.state()
        n = int(st["ram.labels"].shape[0])
        dst.load_state({**st, "capacity": max(capacity, n)})
        if n > capacity:
            dst.resize(capacity)

    def _flash_pool(self, view, t, budget: int) -> dict:
        """A class-balanced random subset of what is stored, as a flash tier of ``budget`` would hold."""
        classes = view.stream.classes_upto(t)
        per = max(1, budget // max(1, len(classes)))
        rng = np.random.default_rng([view.cfg.seed, t, 11])
        pool = {}
        for c in classes:
            ids = view.flash.class_ids("samples", c)
            pool[c] = ids[rng.permutation(ids.size)[:per]]
        return pool
