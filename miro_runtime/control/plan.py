"""Miro v2 under a user's energy budget or task deadline: which arm a task runs with, and the check of
the cost model behind that choice (joules ~ c x samples x epochs + b).

The choice: the most accurate arm whose predicted energy fits what the task has left -- less its
evaluation's reserve and the intercept b -- and whose time fits its deadline (rules.select_within_budget);
with fewer than two arms measured, the arm that trains most, counting one predicted over the budget as
the epochs the guard will let it run. The check: at each task's end the realised cost per trained sample
of the training steps (the window's joules split by time into steps and the rest, b) against the
prediction; one that left its noise (cost.CostCheck) rescales every profiled cost, and time per sample
likewise -- a load change is seen within one task without profiling every arm again.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import numpy as np

from miro_runtime.engine.budget import MODE_NONE
from miro_runtime.engine.hooks import LearnerView
from miro_runtime.records import Candidate, TaskRecord

from .cost import CostCheck
from .knobs import Knobs
from .rules import select_within_budget

if TYPE_CHECKING:
    from .miro import MiroController


class BudgetPlan:
    """The budget side of a MiroController (``ctrl``: its grid, profile window, profiler and incumbent)."""

    def __init__(self, ctrl: "MiroController"):
        self.ctrl = ctrl
        self.cost, self.time_cost = CostCheck(), CostCheck()
        self.s_per_sample = 0.0  # training seconds per sample of the last task (blind time predictions)
        self.fixed_j = 0.0  # the last task's joules outside its training steps: the cost model's intercept
        self.predicted: Optional[dict] = None  # what the decision in force predicted for its task

    # ------------------------------------------------------------------ the choice
    def decide(self, view: LearnerView, t: int, cands: list, n: int) -> tuple:
        """-> (winner Knobs, the decision's energy_budget record, task 0's tie note or None)."""
        c, budget, deadline, tie = self.ctrl, view.guard.budget, view.cfg.task_deadline_s, None
        reserve = budget.eval_reserve(t) + self.fixed_j  # the evaluation, and the task's work beside its steps
        left = budget.remaining(t) - reserve if budget.mode != MODE_NONE else math.inf
        left_s = deadline - budget.eval_time_reserve(t) if deadline is not None else math.inf
        pool = cands or self.window_candidates()
        if len({x.knobs for x in pool}) >= 2:  # one arm's profile compares it with nothing: decide on cost
            pick, how = select_within_budget(pool, left, left_s)
            winner = pick.knobs
            if t == 0:  # its profiles stand for every memory size: the grid's arm, as without a budget
                winner, tie = c._task0_hierarchy(winner)
        else:
            winner, how = self.fit_by_prediction(n, t, left, left_s)
        energy = {"mode": budget.mode, "remaining_j": None if left == math.inf else left, "reserve_j": reserve,
                  "fixed_j": self.fixed_j, "deadline_s": deadline,
                  "remaining_s": None if left_s == math.inf else left_s, "how": how}
        return winner, energy, tie

    def window_candidates(self) -> list:
        """Every arm with recent profiles, as the mean of its window (a round that profiled nothing)."""
        c = self.ctrl
        return [Candidate(c.by_key[k], *(float(np.mean([h[i] for h in hist])) for i in range(3)), profile_j=0.0,
                          n_val=c._n_val * len(hist) or None, from_window=True)
                for k, hist in c.history.items() if hist]

    def fit_by_prediction(self, n: int, t: int, left: float, left_s: float = math.inf) -> tuple:
        """No accuracy measured yet: the arm that trains most within ``left`` joules and ``left_s``
        seconds, counting an arm predicted over them as the part of its epochs the guard will let it
        run (a 5-epoch arm 10% over trains 4.5 epochs, far more than the 1-epoch arm that fits);
        ties to the larger memory. The incumbent when nothing is predicted yet."""
        c = self.ctrl
        pred = {kn: c._predicted_j(kn, n, t) for kn in c.grid if kn.method == c.current.method}
        if any(j is None for j in pred.values()):
            return c.current, "no cost measured yet: kept"

        def trained(kn):  # epochs the guard lets it run
            secs = self.predicted_s(kn, n)
            share = min(1.0, left / pred[kn] if pred[kn] > 0 else 1.0, left_s / secs if secs > 0 else 1.0)
            return round(kn.epochs * max(share, 0.0), 2)
        w = max(pred, key=lambda kn: (trained(kn), -pred[kn], kn.memory))
        cut = "" if trained(w) >= w.epochs else f" (the guard will stop it after about {trained(w):g} epochs)"
        return w, f"predicted: the arm that trains most within the {left:.3g} J left{cut}"

    def predicted_s(self, kn: Knobs, n: int) -> float:
        """Training seconds of a task of ``n`` samples at these knobs: its window's profiles when it has
        some, else the last task's realised time per sample (rescaled by time refits); 0 before any."""
        hist = self.ctrl.history.get(kn.key())
        if hist:
            return float(np.mean([h[2] for h in hist]))
        return self.s_per_sample * n * kn.epochs

    def predict(self, winner: Knobs, cands: list, n: int, t: int) -> dict:
        """What the decision predicts for its task (checked at the task's end); -> a copy for the log."""
        chosen = [c for c in cands if c.knobs == winner]
        self.predicted = {"knobs": winner.key(), "acc": chosen[0].acc if chosen else None,
                          "joules": chosen[0].joules if chosen else self.ctrl._predicted_j(winner, n, t),
                          "seconds": chosen[0].seconds if chosen else self.predicted_s(winner, n) or None,
                          "samples": n * winner.epochs}
        return dict(self.predicted)

    # ------------------------------------------------------------------ the check
    def check(self, view: LearnerView, t: int, rec: TaskRecord, current: str, reacted: bool) -> dict:
        """Realised against predicted, logged with both; a cost that moved beyond its noise rescales every
        profiled cost before the next decision. -> the controller's profile window, rescaled if so."""
        p, history = self.predicted, self.ctrl.history
        if p is None:
            return history
        guarded = t in view.guard.budget.trips
        # compared per trained sample, so a task the guard cut short still tells; one whose knobs a
        # reaction changed mid-task does not
        comparable = p["knobs"] == current and not reacted and rec.train_samples > 0
        # the window's joules split by time: the training steps' share (what the profiles' joules per sample
        # predict) and the rest (ingest, memory update, set-up: the cost model's intercept b)
        step_j = None if rec.energy_j is None else rec.energy_j * min(1.0, rec.train_s / rec.wall_s) \
            if rec.wall_s > 0 else rec.energy_j
        if step_j is not None:
            self.fixed_j = rec.energy_j - step_j
        per_sample = (p["joules"] / p["samples"] if p["joules"] is not None and p["samples"] else None,
                      step_j / rec.train_samples if step_j is not None and rec.train_samples else None)
        factor = self.cost.observe(*per_sample) if comparable else None
        # time per sample likewise (another process on the CPU slows a step without changing its joules
        # under a process-time meter): a moved time rescales the window's predicted seconds
        slow = self.time_cost.observe(p["seconds"] / p["samples"] if p["seconds"] and p["samples"] else None,
                                      rec.train_s / rec.train_samples if rec.train_samples else None) \
            if comparable else None
        if rec.train_samples:  # what the next blind prediction of time starts from
            self.s_per_sample = rec.train_s / rec.train_samples
        if slow is not None:
            history = {k: [(a, j, s * slow) for a, j, s in h] for k, h in history.items()}
            view.event("miro_time_refit", task=t, factor=round(slow, 4), predicted_s=p["seconds"],
                       realised_train_s=rec.train_s, why="the task's training time per sample left its noise: "
                                                         "every predicted time is rescaled by the ratio")
        view.event("miro_realised", task=t, knobs=p["knobs"], predicted_j=p["joules"], realised_j=rec.energy_j,
                   predicted_s=p["seconds"], realised_train_s=rec.train_s,
                   predicted_acc=p["acc"], realised_acc=rec.acc[t] if t < len(rec.acc) else None,
                   guard_tripped=guarded, compared=comparable, noise_log_ratio=round(self.cost.noise(), 4))
        if factor is not None:
            self.ctrl.profiler.scale(factor)
            history = {k: [(a, j * factor, s) for a, j, s in h] for k, h in history.items()}
            view.event("miro_cost_refit", task=t, factor=round(factor, 4), predicted_j=p["joules"],
                       realised_j=rec.energy_j, why="the task's realised training energy left the prediction's "
                                                    "noise: every profiled cost is rescaled by the ratio")
        self.predicted = None
        return history

    def state(self) -> dict:
        return {"cost": self.cost.state(), "time_cost": self.time_cost.state(), "s_per_sample": self.s_per_sample,
                "fixed_j": self.fixed_j}

    def load_state(self, st: dict) -> None:
        self.cost.load_state(st.get("cost", {}))
        self.time_cost.load_state(st.get("time_cost", {}))
        self.s_per_sample, self.fixed_j = st.get("s_per_sample", 0.0), st.get("fixed_j", 0.0)
