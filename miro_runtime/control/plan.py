"""Miro v2 under a user's energy budget or task deadline: which arm a task runs with and for how long,
and the check of the cost model behind that choice (joules ~ c x samples x epochs + b).

The choice (rules.plan_within_budget): arms the profiles measured as worse, and arms that would shrink
the memory running (dropping kept samples), are out; of the rest the largest memory hierarchy, trained
for as many samples as what the task has left pays for -- less its evaluation's reserve and the
intercept b, at the arm's cost per trained sample (the slope c fitted on its last task's own steps
when it ran -- that task's average would carry its set-up, and make a short task look dear -- else its
profiles', else the profiled cost of any arm) -- and as its deadline allows.
The length goes to the learner as a plan (the guard stops the task there, no trip), and is steered while
the task trains (``steer``): after its first few batches the task's own metered cost per sample so far
re-plans what is left (a load change is met within the task, and the plan's margin shrinks to
STEER_MARGIN). The check: at each
task's end the realised cost per trained sample of the training steps (the window's joules split by
time into steps and the rest, b) against the prediction; one that left its noise (cost.CostCheck)
rescales every profiled cost, and time per sample likewise -- a load change is seen within one task
without profiling every arm again. Under a budget a round profiles only when the plan lacks a cost
(task 0, an arm with no realised cost), the task size changed, or the last cost was refitted
(``why_profile``); a changed budget alone is re-divided without one.
"""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Optional

import numpy as np

from miro_runtime.engine.budget import MODE_NONE
from miro_runtime.engine.hooks import LearnerView, StepProgress
from miro_runtime.records import Candidate, TaskRecord

from .cost import CostCheck
from .knobs import Knobs
from .rules import ArmCost, plan_within_budget

if TYPE_CHECKING:
    from .miro import MiroController

# in-task steering: from this many batches on, the task's own cost so far re-plans the rest of it, keeping
# this share of what is left unspent (the cost of the steps still to come varies less than a whole task's)
STEER_AFTER_BATCHES, STEER_MARGIN = 3, 0.03
# before any task was evaluated nothing says what the work after the last step costs (the evaluation, the
# memory update): this share of the task's budget is kept for it (on the bench's stream about 8% is spent)
FIRST_RESERVE = 0.10
# what an evaluation may cost beyond the mean of the last ones (per test set) at the least; the guard's own
# reserve takes their most, plus 25% (budget.EVAL_MARGIN), and a plan inside it left 0.1-0.2 J of a halved
# budget unspent that a guarded static configuration's one step past the line spends (bench/miro_v2.py, S4)
EVAL_SPREAD = 0.10


def slope(first: tuple, last: tuple) -> Optional[float]:
    """Joules per sample between two of a task's metered points ``(samples, window joules)``: the cost
    model's slope c, never below half the average up to ``last`` (one step's joules can come out low by
    chance: a scheduler tick); None without samples or joules between them."""
    (s1, j1), (sl, jl) = first, last
    if sl <= s1 or jl <= j1:
        return None
    return max((jl - j1) / (sl - s1), 0.5 * jl / sl)


class BudgetPlan:
    """The budget side of a MiroController (``ctrl``: its grid, profile window, profiler and incumbent)."""

    def __init__(self, ctrl: "MiroController"):
        self.ctrl = ctrl
        self.cost, self.time_cost = CostCheck(), CostCheck()
        self.s_per_sample = 0.0  # training seconds per sample of the last task (blind time predictions)
        self.fixed_j = 0.0  # the last task's joules beside c x its trained samples: the cost model's intercept b
        self.after_j = 0.0  # of which after its last step (the memory update): what a task in training still owes
        self.realised: Optional[dict] = None  # the last task's arm and its realised cost per trained sample
        self.predicted: Optional[dict] = None  # what the decision in force predicted for its task
        self.last_n: Optional[int] = None  # the last planned task's size (a change re-profiles)
        self.refit_at: Optional[int] = None  # the last task whose realised cost left its noise
        self.steering: Optional[dict] = None  # the task being steered: its size, first-task reserve, metered points

    # ------------------------------------------------------------------ the choice
    def why_profile(self, t: int, n: int) -> Optional[str]:
        """Why task ``t``'s round (``n`` new samples) profiles under a budget; None when it need not. The
        plan stands on what an arm costs per trained sample, and the arm running has its own realised
        cost from the last task: with no refit and the same task size, a profile would re-measure what
        is known, and its joules would come out of the training the budget pays for. A size that moved by
        more than 10% re-profiles. A change of budget alone needs no profile: the plan re-divides what is
        left."""
        r = self.realised
        if t == 0:
            return "task 0: no cost measured yet"
        if r is None or r["knobs"] != self.ctrl.current.key() or r["task"] == 0:  # task 0 ran with no replay
            return "no realised cost of the arm running (with replay)"
        if self.last_n is not None and abs(n - self.last_n) > 0.1 * self.last_n:  # a few samples more: noise
            return f"the task size changed ({self.last_n} -> {n} samples)"
        if self.refit_at == t - 1:
            return "the last task's cost left its noise (refitted)"
        return None

    def decide(self, view: LearnerView, t: int, cands: list, n: int, spent_s: float = 0.0) -> tuple:
        """-> (winner Knobs, the decision's energy_budget record, task 0's tie note or None). ``spent_s``:
        the seconds this task's round already took (its deadline counts them). Plans the task's length
        with the learner's guard."""
        c, budget, deadline, tie = self.ctrl, view.guard.budget, view.cfg.task_deadline_s, None
        self.steering = {"task": t, "n": n, "prior_j": None, "first": None, "last": None}
        reserve = self.reserve(view, t)  # the evaluation, and the task's work beside its steps
        left = budget.remaining(t) - reserve if budget.mode != MODE_NONE else math.inf
        left_s = deadline - budget.eval_time_reserve(t) - spent_s if deadline is not None else math.inf
        pool = cands or self.window_candidates()
        margin = self.margin()
        winner, samples, how = plan_within_budget(self.arm_costs(pool, n, t), n, left, left_s, margin,
                                                  current=c.current if t > 0 else None,
                                                  batch=view.cfg.batch_size)
        if winner is None:
            winner, how = c.current, "no cost measured yet: kept"
        elif samples is not None and "the budget pays" in how:
            j_ps, s_ps = self.per_sample(winner, n, t)
            more = self.past_the_line(view, t, left, j_ps, margin)
            if s_ps and left_s != math.inf:  # never past what the deadline pays
                more = min(more, view.cfg.batch_size * math.floor(left_s * (1 - margin) / s_ps / view.cfg.batch_size))
            if more > samples:
                samples = None if more >= n * winner.epochs else more
                how += f"; {more} samples: the step past the guard's line is paid by its reserve's surplus"
        elif t == 0 and pool and all(x.knobs != winner for x in pool):
            tie = (f"task 0 has no replay: the profile of epochs={winner.epochs} stands for every memory size; "
                   f"the prior gives it to the largest, {winner.key()}")
        view.guard.plan(t, samples, why=how)
        self.last_n = n
        energy = {"mode": budget.mode, "remaining_j": None if left == math.inf else left, "reserve_j": reserve,
                  "fixed_j": self.fixed_j, "deadline_s": deadline,
                  "remaining_s": None if left_s == math.inf else left_s, "task_samples": n, "planned_samples": samples,
                  "margin": margin, "how": how}
        return winner, energy, tie

    def reserve(self, view: LearnerView, t: int, in_training: bool = False) -> float:
        """Joules task ``t`` keeps beside its training steps: the guard's reserve for its evaluation and
        the cost model's intercept from the last task -- all of it (``fixed_j``) when the task is planned,
        only the work after its last step (``after_j``) ``in_training`` (its set-up is in its window
        already). Before any task was evaluated, FIRST_RESERVE of what the task has when it is decided
        (kept for the task: ``steering``)."""
        budget = view.guard.budget
        r = budget.eval_reserve(t) + (self.after_j if in_training else self.fixed_j)
        st = self.steering if self.steering is not None and self.steering["task"] == t else None
        if r > 0 or budget.mode == MODE_NONE or st is None:
            return r
        if st["prior_j"] is None:
            st["prior_j"] = FIRST_RESERVE * max(0.0, budget.remaining(t))
        return st["prior_j"]

    def marginal(self, p: StepProgress) -> Optional[float]:
        """Joules per trained sample of the task's steps since its first (``steering``'s first point):
        its cost model's slope c, without the set-up and first-step work a task's average carries (that
        average made a short task look dear, so the next one was planned short again: bench/miro_v2.py,
        S4 after the budget halved); None before a batch past the first, or when the meter cannot tell."""
        st = self.steering
        first = st.get("first") if st is not None else None
        if first is None or p.window_j is None:
            return None
        return slope(first, (p.samples, p.window_j))

    def eval_estimate(self, view: LearnerView, t: int) -> Optional[float]:
        """What task ``t``'s evaluation is expected to cost: the mean per test set of the last three
        evaluations times its t + 1 sets, plus their spread (two coefficients of variation, at least
        EVAL_SPREAD); None before any evaluation."""
        by = view.guard.budget.by_task
        per_set = [by[u]["eval"] / (u + 1) for u in range(max(0, t - 3), t) if by.get(u, {}).get("eval")]
        if not per_set:
            return None
        mean = statistics.fmean(per_set)
        cv = statistics.stdev(per_set) / mean if len(per_set) >= 2 and mean > 0 else 0.0
        return mean * (t + 1) * (1 + max(EVAL_SPREAD, 2 * cv))

    def past_the_line(self, view: LearnerView, t: int, left_j: float, j_ps: Optional[float],
                      margin: float) -> int:
        """More samples (whole batches) than ``left_j`` pays for: the guard lets a step
        start while what is left is above its evaluation reserve, so the step that crosses that line runs
        -- a guarded static configuration's last step always does. A plan may end on it (no trip: the
        plan stops the task first) where the reserve's surplus over the evaluation's expected cost
        (``eval_estimate``) pays for it. -> samples from here (0: none past what ``left_j`` pays)."""
        bs, guard = view.cfg.batch_size, view.guard
        expected = self.eval_estimate(view, t)
        if not j_ps or j_ps <= 0 or expected is None or left_j <= 0:
            return 0
        surplus = guard.budget.eval_reserve(t) - expected
        if surplus <= 0:
            return 0
        # the steps that start before the line (the last of them crosses it), and what the budget pays for
        # when the evaluation costs what it is expected to
        line = bs * math.ceil(left_j * (1 - margin) / j_ps / bs)
        paid = bs * math.floor((left_j + surplus) * (1 - margin) / j_ps / bs)
        return min(line, paid)

    def steer(self, view: LearnerView, t: int, p: StepProgress) -> None:
        """After a step of a planned task: re-plan its length from its own cost per trained sample so far
        (joules: the steps' since its first, ``marginal``, once a past task's fit holds; seconds: the
        window's over its samples, set-up included, a slight over-estimate) so that what is left -- less
        the evaluation's reserve and the work after the last step (``reserve``) -- pays for the rest,
        STEER_MARGIN kept; never past the arm's whole epochs. A change of at least a batch and a tenth of
        what the plan had left is adopted and logged (``miro_replan``); one that leaves nothing to train
        stops the task at this step, as its plan (no guard trip)."""
        st, guard, bs = self.steering, view.guard, view.cfg.batch_size
        if st is None or st["task"] != t:
            return
        if p.window_j is not None:  # the points the task's cost model is fitted on (``marginal``, ``check``)
            st["last"] = (p.samples, p.window_j)
            if st.get("first") is None:
                st["first"] = st["last"]
        if p.samples < STEER_AFTER_BATCHES * bs:
            return
        budget, deadline = guard.budget, view.cfg.task_deadline_s
        cap = st["n"] * view.cfg.epochs  # a mid-task reaction may have changed the epochs
        more, binds = math.inf, None
        j_ps = None
        if budget.mode != MODE_NONE and p.window_j:
            left_j = budget.remaining(t, p.in_window_j) - self.reserve(view, t, in_training=True)
            # the slope once a past task's fit says what comes after the last step (``after_j``); before
            # that, the average: its set-up share is the margin the unknown rest of the task is paid from
            fitted = self.realised is not None and self.realised.get("fit")
            j_ps = (self.marginal(p) if fitted else None) or p.window_j / p.samples
            more, binds = left_j * (1 - STEER_MARGIN) / j_ps, "the budget"
        if deadline is not None and p.window_s > 0:
            left_s = deadline - budget.eval_time_reserve(t) - p.elapsed_s
            more_s = left_s * (1 - STEER_MARGIN) / (p.window_s / p.samples)
            if more_s < more:
                more, binds = more_s, "the deadline"
        if more == math.inf:
            return
        # whole batches (the guard stops at the first step boundary at or past the plan): to the nearest where
        # the budget binds -- rounding down would leave half a batch of every task unspent on average (a small
        # task's batch is ~5% of its budget), and the margin and the evaluation's reserve take the half batch
        # rounding up; down where the deadline binds -- a step's time moves more than its joules under another
        # process's load, and a half batch past the plan ran into the deadline guard (bench/miro_v2.py, S3)
        rnd = round if binds == "the budget" else math.floor
        new = min(cap, p.samples + bs * rnd(max(0.0, more) / bs))
        if binds == "the budget":
            new = min(cap, max(new, p.samples + self.past_the_line(view, t, left_j, j_ps, STEER_MARGIN)))
        plan = guard.plans.get(t)
        old = plan["samples"] if plan is not None else cap
        # what the plan in force would train: the guard stops at the first step boundary at or past it
        runs = min(cap, p.samples + bs * math.ceil(max(0, old - p.samples) / bs))
        if abs(new - runs) < max(bs, 0.1 * max(0, runs - p.samples)):
            return
        why = (f"in-task refit after {p.samples} samples: {binds} pays for {max(0, new - p.samples)} more at this "
               f"task's own cost so far (margin {STEER_MARGIN:.0%})")
        view.event("miro_replan", task=t, samples=p.samples, planned_before=old, planned=new, whole_epochs=cap,
                   binds=binds,
                   j_per_sample=None if not p.window_j else p.window_j / p.samples,
                   s_per_sample=p.window_s / p.samples, predicted=self.predicted, why=why)
        guard.plan(t, None if new >= cap else new, why=why)

    def margin(self) -> float:
        """What a plan leaves unspent for the spread of the realised cost: two standard deviations of the
        past tasks' log-ratios realised/predicted (5% before three), within 3-20%."""
        r = self.cost.log_ratios
        sd = statistics.stdev(r) if len(r) >= 3 else 0.025
        return min(0.20, max(0.03, 2 * sd))

    def per_sample(self, kn: Knobs, n: int, t: int) -> tuple:
        """(joules, seconds) per trained sample at these knobs: the last task's realised cost when it ran
        them (with replay, as every task after 0), else the mean of the arm's profiles in the window, else
        the profiled cost of any arm (rules of thumb for its replay); (None, None) before any profile."""
        r = self.realised
        if r is not None and r["knobs"] == kn.key() and (r["task"] > 0 or t == 0):
            return r["j"], r["s"]
        hist = self.ctrl.history.get(kn.key())
        if hist:  # a profile's joules and seconds are for its task's size (h[3]; older windows: this one's)
            trained = [(h[3] if len(h) > 3 else n) * kn.epochs for h in hist]
            return (float(np.mean([h[1] / k for h, k in zip(hist, trained)])),
                    float(np.mean([h[2] / k for h, k in zip(hist, trained)])))
        unit = self.ctrl.profiler.unit(t, kn)
        return unit, (self.s_per_sample or None) if unit is not None else None

    def arm_costs(self, pool: list, n: int, t: int) -> list:
        """Every arm of the grid as the plan sees it: its cost per trained sample, and its accuracy where
        profiled (at task 0, with no replay, a profile stands for every arm with its epochs)."""
        def where(kn):
            return (kn.epochs, kn.method) if t == 0 else kn.key()
        acc = {where(x.knobs): (x.acc, x.n_val) for x in pool}
        return [ArmCost(kn, *self.per_sample(kn, n, t), *acc.get(where(kn), (None, None))) for kn in self.ctrl.grid]

    def window_candidates(self) -> list:
        """Every arm with recent profiles, as the mean of its window (a round that profiled nothing)."""
        c = self.ctrl
        return [Candidate(c.by_key[k], *(float(np.mean([h[i] for h in hist])) for i in range(3)), profile_j=0.0,
                          n_val=c._n_val * len(hist) or None, from_window=True)
                for k, hist in c.history.items() if hist]

    def predict(self, winner: Knobs, cands: list, n: int, t: int, samples: Optional[int] = None) -> dict:
        """What the decision predicts for its task (checked at the task's end), trained for ``samples``
        (a plan) or the arm's epochs; -> a copy for the log."""
        chosen = [c for c in cands if c.knobs == winner]
        total = samples if samples is not None else n * winner.epochs
        j_ps, s_ps = self.per_sample(winner, n, t)
        joules = j_ps * total if j_ps is not None else None
        seconds = s_ps * total if s_ps else None
        r = self.realised
        # a fitted slope predicts the joules beside the intercept b (``fixed_j``): checked on those terms
        fixed = self.fixed_j if r is not None and r.get("fit") and j_ps == r["j"] else None
        if samples is None and chosen:  # its whole epochs: the profile's own prediction
            joules, seconds, fixed = chosen[0].joules, chosen[0].seconds, None
        self.predicted = {"knobs": winner.key(), "acc": chosen[0].acc if chosen else None, "joules": joules,
                          "seconds": seconds, "samples": total, "fixed_j": fixed}
        return dict(self.predicted)

    # ------------------------------------------------------------------ the check
    def fit(self, rec: TaskRecord) -> tuple:
        """(c, after): the task's joules per trained sample past its first step (None without a second
        metered point), and its joules after its last step (None without one), from its steering points
        -- only when they are this window's (the last point is the record's last step: not a task resumed
        from a checkpoint, whose window restarted)."""
        st = self.steering
        if st is None or st["task"] != rec.task or st.get("last") is None or rec.energy_j is None:
            return None, None
        sl, jl = st["last"]
        if sl != rec.train_samples or not 0 < jl <= rec.energy_j:
            return None, None
        return slope(st["first"], st["last"]), rec.energy_j - jl

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
        # predict) and the rest (ingest, memory update, set-up)
        step_j = None if rec.energy_j is None else rec.energy_j * min(1.0, rec.train_s / rec.wall_s) \
            if rec.wall_s > 0 else rec.energy_j
        # the cost model J = c x samples + b fitted on the task's own points: c its steps' joules per sample
        # since the first, b the rest (set-up and the first step's extra before, the memory update after);
        # a task of one step has no slope and keeps the split by time
        c, after = self.fit(rec) if not reacted else (None, None)
        if c is not None:
            self.fixed_j = max(0.0, rec.energy_j - c * rec.train_samples)
        elif step_j is not None:
            self.fixed_j = rec.energy_j - step_j
        if step_j is not None:
            self.after_j = min(self.fixed_j, after) if after is not None else self.fixed_j
        # realised per trained sample on the prediction's own terms: a fitted slope predicted the joules
        # beside the intercept it assumed, a profile the steps' share
        real_j = None if rec.energy_j is None or not rec.train_samples else \
            (rec.energy_j - p["fixed_j"]) / rec.train_samples if p.get("fixed_j") is not None else \
            step_j / rec.train_samples
        per_sample = (p["joules"] / p["samples"] if p["joules"] is not None and p["samples"] else None, real_j)
        factor = self.cost.observe(*per_sample) if comparable else None
        # time per sample likewise (another process on the CPU slows a step without changing its joules
        # under a process-time meter): a moved time rescales the window's predicted seconds
        slow = self.time_cost.observe(p["seconds"] / p["samples"] if p["seconds"] and p["samples"] else None,
                                      rec.train_s / rec.train_samples if rec.train_samples else None) \
            if comparable else None
        if rec.train_samples:  # what the next blind prediction of time starts from
            self.s_per_sample = rec.train_s / rec.train_samples
            if step_j is not None and not reacted:  # the arm's own cost, next time it is planned
                self.realised = {"knobs": current, "task": t, "j": c if c is not None else step_j / rec.train_samples,
                                 "s": self.s_per_sample, "fit": c is not None}
        if slow is not None or factor is not None:
            self.refit_at = t
        if slow is not None:
            history = {k: [(h[0], h[1], h[2] * slow, *h[3:]) for h in hs] for k, hs in history.items()}
            view.event("miro_time_refit", task=t, factor=round(slow, 4), predicted_s=p["seconds"],
                       realised_train_s=rec.train_s, why="the task's training time per sample left its noise: "
                                                         "every predicted time is rescaled by the ratio")
        view.event("miro_realised", task=t, knobs=p["knobs"], predicted_j=p["joules"], realised_j=rec.energy_j,
                   predicted_s=p["seconds"], realised_train_s=rec.train_s,
                   predicted_acc=p["acc"], realised_acc=rec.acc[t] if t < len(rec.acc) else None,
                   guard_tripped=guarded, compared=comparable, noise_log_ratio=round(self.cost.noise(), 4))
        if factor is not None:
            self.ctrl.profiler.scale(factor)
            history = {k: [(h[0], h[1] * factor, *h[2:]) for h in hs] for k, hs in history.items()}
            view.event("miro_cost_refit", task=t, factor=round(factor, 4), predicted_j=p["joules"],
                       realised_j=rec.energy_j, why="the task's realised training energy left the prediction's "
                                                    "noise: every profiled cost is rescaled by the ratio")
        self.predicted = None
        return history

    def state(self) -> dict:
        return {"cost": self.cost.state(), "time_cost": self.time_cost.state(), "s_per_sample": self.s_per_sample,
                "fixed_j": self.fixed_j, "after_j": self.after_j, "realised": self.realised, "last_n": self.last_n,
                "refit_at": self.refit_at,
                "steering": self.steering}

    def load_state(self, st: dict) -> None:
        self.cost.load_state(st.get("cost", {}))
        self.time_cost.load_state(st.get("time_cost", {}))
        self.s_per_sample, self.fixed_j = st.get("s_per_sample", 0.0), st.get("fixed_j", 0.0)
        self.after_j = st.get("after_j", self.fixed_j)  # a checkpoint from before the fit: all of it, as then
        self.realised = st.get("realised")
        self.last_n, self.refit_at = st.get("last_n"), st.get("refit_at")
        self.steering = st.get("steering")
